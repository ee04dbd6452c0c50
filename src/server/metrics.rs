//! `GET /metrics` (Prometheus text): what the server counts as it goes — records received and
//! refused by kind and rule, request latency by route — and what the store says at the
//! scrape — deliveries by trust, destination and state. Labels carry ids and rules only.
//!
//! Owns: the registry and its names. May not touch: what is counted (the handlers say).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::deliveries::DeliveryCount;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    trust: String,
    destination: String,
    state: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// The server's counters and histograms.
pub struct Metrics {
    registry: Registry,
    received: Family<KindLabel, Counter>,
    refused: Family<RuleLabel, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let received = Family::<KindLabel, Counter>::default();
        let refused = Family::<RuleLabel, Counter>::default();
        let latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "doorstep_records_received",
            "Records posted and stored (new or unchanged), by kind",
            received.clone(),
        );
        registry.register(
            "doorstep_records_refused",
            "Records posted and refused, by rule (forbidden, conflict, or a rejection rule)",
            refused.clone(),
        );
        registry.register(
            "doorstep_http_request_duration_seconds",
            "Time to answer a request, by route",
            latency.clone(),
        );
        Metrics {
            registry,
            received,
            refused,
            latency,
        }
    }
}

impl Metrics {
    pub fn received(&self, kind: &str) {
        self.received
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn refused(&self, rule: &str) {
        self.refused
            .get_or_create(&RuleLabel { rule: rule.into() })
            .inc();
    }

    pub fn took(&self, route: &str, d: Duration) {
        self.latency
            .get_or_create(&RouteLabel {
                route: route.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// The text exposition: the server's metrics and, from the store, `deliveries`.
    pub fn encode(&self, deliveries: &[DeliveryCount]) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let mut scrape = Registry::default();
        let by_state = Family::<DeliveryLabel, Gauge>::default();
        scrape.register(
            "doorstep_deliveries",
            "Deliveries by trust, destination and state (dead: the dead letters)",
            by_state.clone(),
        );
        for c in deliveries {
            by_state
                .get_or_create(&DeliveryLabel {
                    trust: c.trust.clone(),
                    destination: c.destination.clone(),
                    state: c.state.to_string(),
                })
                .set(i64::try_from(c.count).unwrap_or(i64::MAX));
        }
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &scrape);
        out.push_str("# EOF\n");
        out
    }
}
