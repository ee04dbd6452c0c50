//! `GET /metrics` (Prometheus text): what the server counts as it goes — records received and
//! refused by kind and rule, request latency by route — and what the store says at the
//! scrape ([`Scrape`]) — deliveries by trust, destination and state, each destination's
//! queue depth, the age of its oldest due delivery and its retries, and each trust's log
//! size. Labels carry ids and rules only.
//!
//! Owns: the registry and its names. May not touch: what is counted (the handlers say).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use chrono::{DateTime, Utc};

use crate::store::deliveries::{DeliveryCount, QueueStat};

/// What the store says at a scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    pub now: DateTime<Utc>,
    pub deliveries: Vec<DeliveryCount>,
    pub queues: Vec<QueueStat>,
    /// Entries in each trust's evidence trail.
    pub log_sizes: Vec<(String, u64)>,
    /// Dead row versions by table (PostgreSQL; bloat watched).
    pub dead_tuples: Vec<(String, u64)>,
    /// Deliveries in flight by the instance leasing them.
    pub leases: Vec<crate::store::deliveries::LeaseCount>,
}

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
struct DestinationLabel {
    trust: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrustLabel {
    trust: String,
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
    commits: Histogram,
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
        // 1 to 4096 records a transaction.
        let commits = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "doorstep_intake_commit_records",
            "Records written per intake transaction (group commit: concurrent requests share one)",
            commits.clone(),
        );
        Metrics {
            registry,
            received,
            refused,
            latency,
            commits,
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

    /// What to call with each intake transaction's record count.
    pub fn commit_counter(&self) -> impl Fn(usize) + Send + Sync + 'static {
        let commits = self.commits.clone();
        move |n| commits.observe(n as f64)
    }

    pub fn took(&self, route: &str, d: Duration) {
        self.latency
            .get_or_create(&RouteLabel {
                route: route.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// The text exposition: the server's metrics and what the store says (`scrape`).
    pub fn encode(&self, scrape: &Scrape) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let mut registry = Registry::default();
        let by_state = Family::<DeliveryLabel, Gauge>::default();
        let dead = Family::<DestinationLabel, Gauge>::default();
        let depth = Family::<DestinationLabel, Gauge>::default();
        let waiting = Family::<DestinationLabel, Gauge>::default();
        let oldest =
            Family::<DestinationLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let retries = Family::<DestinationLabel, Gauge>::default();
        let log_size = Family::<TrustLabel, Gauge>::default();
        registry.register(
            "doorstep_deliveries",
            "Deliveries by trust, destination and state",
            by_state.clone(),
        );
        registry.register(
            "doorstep_dead_letters",
            "Dead letters waiting for a person, by destination",
            dead.clone(),
        );
        registry.register(
            "doorstep_delivery_queue_depth",
            "Deliveries due now and not yet sent, by destination",
            depth.clone(),
        );
        registry.register(
            "doorstep_delivery_queue_waiting",
            "Deliveries pending or retrying, due or not, by destination",
            waiting.clone(),
        );
        registry.register(
            "doorstep_delivery_oldest_due_age_seconds",
            "How long the longest-waiting due delivery has been due (0 when none is)",
            oldest.clone(),
        );
        registry.register(
            "doorstep_delivery_retries",
            "Attempts beyond each delivery's first, by destination",
            retries.clone(),
        );
        registry.register(
            "doorstep_audit_log_entries",
            "Entries in each trust's evidence trail",
            log_size.clone(),
        );
        let dead_tuples = Family::<TableLabel, Gauge>::default();
        registry.register(
            "doorstep_store_dead_tuples",
            "Dead row versions waiting for vacuum, by table (PostgreSQL)",
            dead_tuples.clone(),
        );
        let leased = Family::<InstanceLabel, Gauge>::default();
        registry.register(
            "doorstep_deliveries_leased",
            "Deliveries in flight, by the instance holding their leases",
            leased.clone(),
        );
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (table, n) in &scrape.dead_tuples {
            dead_tuples
                .get_or_create(&TableLabel {
                    table: table.clone(),
                })
                .set(count(*n));
        }
        for l in &scrape.leases {
            leased
                .get_or_create(&InstanceLabel {
                    instance: l.instance.clone(),
                })
                .set(count(l.in_flight));
        }
        for c in &scrape.deliveries {
            by_state
                .get_or_create(&DeliveryLabel {
                    trust: c.trust.clone(),
                    destination: c.destination.clone(),
                    state: c.state.to_string(),
                })
                .set(count(c.count));
            if c.state == crate::store::rules::DeliveryState::Dead {
                dead.get_or_create(&DestinationLabel {
                    trust: c.trust.clone(),
                    destination: c.destination.clone(),
                })
                .set(count(c.count));
            }
        }
        for q in &scrape.queues {
            let label = DestinationLabel {
                trust: q.trust.clone(),
                destination: q.destination.clone(),
            };
            depth.get_or_create(&label).set(count(q.due));
            waiting.get_or_create(&label).set(count(q.waiting));
            retries.get_or_create(&label).set(count(q.retries));
            let age = q.oldest_due.map_or(0.0, |t| {
                (scrape.now - t).num_milliseconds().max(0) as f64 / 1000.0
            });
            oldest.get_or_create(&label).set(age);
        }
        for (trust, size) in &scrape.log_sizes {
            log_size
                .get_or_create(&TrustLabel {
                    trust: trust.clone(),
                })
                .set(count(*size));
        }
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out.push_str("# EOF\n");
        out
    }
}
