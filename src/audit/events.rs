//! Which evidence-trail events intake and delivery make (SPEC §5), from plain facts of what
//! happened. The store appends what these return, in the transaction of what they record;
//! it decides none of it.

use std::collections::BTreeMap;

use super::{Event, EventType};
use crate::store::deliveries::{AttemptOutcome, Claimed, Finished, Replayed};
use crate::store::rules::{DeliveryState, ExceptionState, REPLAYED_TO};
use std::future::Future;

use crate::store::deliveries::DeliveryStore;
use crate::store::{
    IngestOutcome, IntakeBatch, IntakeFacts, NewRecord, PurgePage, PurgedRevision, Store,
    StoreError,
};

/// The events of one intake batch: what was stored (and the exceptions it raised),
/// exceptions resolved, conflicts, and rejections that name a well-formed trust.
pub fn intake(facts: &IntakeFacts<'_>) -> Vec<Event> {
    let IntakeFacts {
        batch,
        outcomes,
        closed,
        at,
    } = *facts;
    let about = |event: EventType, r: &NewRecord| {
        let mut e = Event::new(event, at, &r.trust);
        e.school = Some(r.school_urn.clone());
        e.kind = Some(r.kind.as_str().to_owned());
        e.record_id = Some(r.id.clone());
        e.revision = Some(r.revision);
        e
    };
    let mut events = Vec::new();
    for (o, r) in outcomes.iter().zip(&batch.records) {
        if *o != IngestOutcome::Stored {
            continue;
        }
        let mut e = about(EventType::Received, r);
        e.content_hash = Some(r.hash.to_hex());
        e.projection_hash = Some(r.projection.to_hex());
        events.push(e);
        if !r.exceptions.is_empty() {
            let mut e = about(EventType::ExceptionRaised, r);
            e.rules = r.exceptions.iter().map(|x| x.rule.to_owned()).collect();
            events.push(e);
        }
    }
    // Resolved exceptions, one event per record revision that resolved them.
    let mut resolved: BTreeMap<(&str, &str, &str, &str, u32), Vec<String>> = BTreeMap::new();
    for c in closed
        .iter()
        .filter(|c| c.state == ExceptionState::Resolved)
    {
        resolved
            .entry((
                c.trust.as_str(),
                c.kind.as_str(),
                c.id.as_str(),
                c.school.as_str(),
                c.closed_by_revision,
            ))
            .or_default()
            .push(c.rule.clone());
    }
    for ((trust, kind, id, school, revision), mut rules) in resolved {
        rules.sort();
        let mut e = Event::new(EventType::ExceptionResolved, at, trust);
        e.school = Some(school.to_owned());
        e.kind = Some(kind.to_owned());
        e.record_id = Some(id.to_owned());
        e.revision = Some(revision);
        e.rules = rules;
        events.push(e);
    }
    for (o, r) in outcomes.iter().zip(&batch.records) {
        if let IngestOutcome::Conflict(c) = o {
            let mut e = about(EventType::Conflict, r);
            e.rules = vec![c.rule.as_str().to_owned()];
            e.content_hash = Some(r.hash.to_hex());
            events.push(e);
        }
    }
    for rej in &batch.rejections {
        if let Some(trust) = &rej.trust {
            let mut e = Event::new(EventType::Rejected, at, trust);
            e.school.clone_from(&rej.school);
            e.record_id.clone_from(&rej.record_id);
            e.rules = vec![rej.rule.as_str().to_owned()];
            events.push(e);
        }
    }
    events
}

/// The event of one delivery attempt's outcome.
pub fn delivery_outcome(c: &Claimed, outcome: &AttemptOutcome, at: &str) -> Event {
    let event = match outcome {
        AttemptOutcome::Delivered { .. } => EventType::Delivered,
        AttemptOutcome::Retry { .. } => EventType::Failed,
        AttemptOutcome::Dead { .. } => EventType::DeadLettered,
    };
    let state: DeliveryState = outcome.state();
    let mut e = Event::new(event, at, &c.trust);
    e.school = Some(c.school.clone());
    e.kind = Some(c.kind.as_str().to_owned());
    e.record_id = Some(c.record_id.clone());
    e.revision = Some(c.revision);
    e.destination = Some(c.destination.clone());
    e.state = Some(state.as_str().to_owned());
    e.content_hash = Some(c.content_hash.clone());
    e
}

/// The event of one attempt's outcome, as recorded.
pub fn finished(f: &Finished) -> Event {
    delivery_outcome(&f.claimed, &f.outcome, &f.at)
}

/// The events of dead letters put back to be sent, in order.
pub fn replayed(replayed: &[Replayed], at: &str) -> Vec<Event> {
    replayed
        .iter()
        .map(|r| {
            let mut e = Event::new(EventType::Replayed, at, &r.trust);
            e.school = Some(r.school.clone());
            e.kind = Some(r.kind.clone());
            e.record_id = Some(r.record_id.clone());
            e.revision = Some(r.revision);
            e.destination = Some(r.destination.clone());
            e.state = Some(REPLAYED_TO.as_str().to_owned());
            e
        })
        .collect()
}

/// The events of one purge page: a `purged` event per revision whose content left the
/// store, with the content hash the trail keeps proving it by.
pub fn purged(trust: &str, purged: &[PurgedRevision], at: &str) -> Vec<Event> {
    purged
        .iter()
        .map(|p| {
            let mut e = Event::new(EventType::Purged, at, trust);
            e.school = Some(p.school.clone());
            e.kind = Some(p.kind.clone());
            e.record_id = Some(p.id.clone());
            e.revision = Some(p.revision);
            e.content_hash = Some(p.content_hash.clone());
            e
        })
        .collect()
}

/// A store that writes intake with the trail's events: `ingest` is
/// [`Store::ingest_with_trail`] with [`intake`]. Every [`Store`] is one.
pub trait TrailedStore: Store {
    /// Writes a batch in one transaction with its trail events; nothing is acknowledged
    /// before the commit.
    fn ingest(
        &self,
        batch: &IntakeBatch,
    ) -> impl Future<Output = Result<Vec<IngestOutcome>, StoreError>> + Send {
        self.ingest_with_trail(batch, &intake)
    }

    /// [`Store::purge_with_trail`] with the trail's `purged` events ([`purged`]).
    fn purge(
        &self,
        trust: &str,
        cutoff: &str,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<PurgePage, StoreError>> + Send {
        self.purge_with_trail(trust, cutoff, after, limit, &purged)
    }
}

impl<S: Store> TrailedStore for S {}

/// A delivery store that records outcomes and replays with the trail's events. Every
/// [`DeliveryStore`] is one.
pub trait TrailedDeliveries: DeliveryStore {
    /// Records outcomes with their trail events ([`finished`]) in one transaction;
    /// returns the indices of late outcomes (their lease was lost), which changed nothing.
    fn finish(
        &self,
        done: &[Finished],
    ) -> impl Future<Output = Result<Vec<usize>, StoreError>> + Send {
        self.finish_with_trail(done, &finished)
    }

    /// [`DeliveryStore::replay_with_trail`] with the trail's events ([`replayed`]).
    fn replay(
        &self,
        ids: &[i64],
        destination: Option<(&str, &str)>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send {
        self.replay_with_trail(ids, destination, &replayed)
    }
}

impl<S: DeliveryStore> TrailedDeliveries for S {}
