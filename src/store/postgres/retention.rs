//! Retention and the exporter's reads in PostgreSQL, as in SQLite: a purge page decided and
//! emptied in one transaction (under the trust's log head, so that no delivery outcome of
//! the trust commits between the check and the purge), with its `purged` events; current
//! revisions read a page at a time.

use super::{Col, PgStore, now};
use crate::records::Kind;
use crate::store::{
    CurrentRevision, DeliveredTo, PurgePage, PurgeTrail, PurgedRevision, StoreError,
};

impl PgStore {
    pub(super) async fn sql_purge(
        &self,
        trust: &str,
        cutoff: &str,
        after: i64,
        limit: usize,
        trail: PurgeTrail<'_>,
    ) -> Result<PurgePage, StoreError> {
        let err = self.db_err();
        let undecoded = self.undecoded();
        let mut tx = self.pool.begin().await.map_err(&err)?;
        self.lock_heads(&mut tx, [trust]).await?;
        // The revisions' rows are locked as they are chosen: a routing or intake of the
        // same rows waits for this page.
        let rows = sqlx::query(
            "SELECT r.seq, r.kind, r.id, r.revision, r.school_urn, r.content_hash FROM records r \
             WHERE r.trust = $1 AND r.seq > $2 AND r.purged_at IS NULL AND r.routed \
               AND r.received_at < $3 \
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.trust = r.trust \
                 AND d.kind = r.kind AND d.record_id = r.id AND d.revision = r.revision \
                 AND (d.state <> 'delivered' OR d.delivered_at IS NULL OR d.delivered_at >= $3)) \
             ORDER BY r.seq LIMIT $4 FOR UPDATE",
        )
        .bind(trust)
        .bind(after)
        .bind(cutoff)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut purged = Vec::with_capacity(rows.len());
        for r in &rows {
            seqs.push(r.col::<i64, _>(0).map_err(&undecoded)?);
            purged.push(PurgedRevision {
                kind: r.col(1).map_err(&undecoded)?,
                id: r.col(2).map_err(&undecoded)?,
                revision: u32::try_from(r.col::<i64, _>(3).map_err(&undecoded)?).unwrap_or(0),
                school: r.col(4).map_err(&undecoded)?,
                content_hash: r.col(5).map_err(&undecoded)?,
            });
        }
        let at = now();
        if !seqs.is_empty() {
            sqlx::query("UPDATE records SET content = '', purged_at = $2 WHERE seq = ANY($1)")
                .bind(&seqs)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            let events = trail(trust, &purged, &at);
            self.append_events(&mut tx, &events).await?;
        }
        tx.commit().await.map_err(&err)?;
        let next = if seqs.len() < limit {
            None
        } else {
            seqs.last().copied()
        };
        Ok(PurgePage { purged, next })
    }

    pub(super) async fn sql_current_revisions(
        &self,
        trust: &str,
        school: &str,
        kind: Kind,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CurrentRevision>, StoreError> {
        let undecoded = self.undecoded();
        let rows = sqlx::query(
            "SELECT r.seq, r.id, r.revision, r.school_urn, r.content_hash, r.received_at, \
               CASE WHEN r.purged_at IS NULL THEN r.content END, \
               ARRAY(SELECT d.destination FROM deliveries d WHERE d.trust = r.trust AND d.kind = r.kind \
                  AND d.record_id = r.id AND d.revision = r.revision ORDER BY d.seq), \
               ARRAY(SELECT d.state FROM deliveries d WHERE d.trust = r.trust AND d.kind = r.kind \
                  AND d.record_id = r.id AND d.revision = r.revision ORDER BY d.seq), \
               ARRAY(SELECT d.delivered_at FROM deliveries d WHERE d.trust = r.trust AND d.kind = r.kind \
                  AND d.record_id = r.id AND d.revision = r.revision ORDER BY d.seq), \
               ARRAY(SELECT e.rule FROM exceptions e WHERE e.trust = r.trust \
                  AND e.kind = r.kind AND e.id = r.id AND e.revision = r.revision ORDER BY e.rule) \
             FROM records r \
             WHERE r.trust = $1 AND r.school_urn = $2 AND r.kind = $3 AND r.current AND r.seq > $4 \
             ORDER BY r.seq LIMIT $5",
        )
        .bind(trust)
        .bind(school)
        .bind(kind.as_str())
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db_err())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let dests: Vec<String> = r.col(7).map_err(&undecoded)?;
            let states: Vec<String> = r.col(8).map_err(&undecoded)?;
            let at: Vec<Option<String>> = r.col(9).map_err(&undecoded)?;
            out.push(CurrentRevision {
                seq: r.col(0).map_err(&undecoded)?,
                kind,
                id: r.col(1).map_err(&undecoded)?,
                revision: u32::try_from(r.col::<i64, _>(2).map_err(&undecoded)?).unwrap_or(0),
                school: r.col(3).map_err(&undecoded)?,
                content_hash: r.col(4).map_err(&undecoded)?,
                received_at: r.col(5).map_err(&undecoded)?,
                canonical: r.col(6).map_err(&undecoded)?,
                deliveries: dests
                    .into_iter()
                    .zip(states)
                    .zip(at)
                    .map(|((destination, state), delivered_at)| DeliveredTo {
                        destination,
                        state,
                        delivered_at,
                    })
                    .collect(),
                exceptions: r.col(10).map_err(&undecoded)?,
            });
        }
        Ok(out)
    }
}
