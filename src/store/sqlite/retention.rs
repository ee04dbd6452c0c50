//! Retention and the exporter's reads in SQLite: emptying expired revisions' content with
//! their `purged` events in one transaction, and current revisions read a page at a time
//! with where they were delivered and the rules they raised.

use super::{Col, SqliteStore, json_param, now};
use crate::records::Kind;
use crate::store::{
    CurrentRevision, DeliveredTo, PurgePage, PurgeTrail, PurgedRevision, StoreError,
};

impl SqliteStore {
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
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        // Decided inside the write transaction: a delivery cannot change state between
        // the check and the purge. Rows are walked in rowid order from `after` (`+r.trust`
        // keeps the planner off the primary key's index, which would sort the whole trust
        // for every page).
        let rows = sqlx::query(
            "SELECT r.rowid, r.kind, r.id, r.revision, r.school_urn, r.content_hash FROM records r \
             WHERE r.rowid > ?2 AND +r.trust = ?1 AND r.purged_at IS NULL AND r.routed = 1 \
               AND r.received_at < ?3 \
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.trust = r.trust \
                 AND d.kind = r.kind AND d.record_id = r.id AND d.revision = r.revision \
                 AND (d.state <> 'delivered' OR d.delivered_at IS NULL OR d.delivered_at >= ?3)) \
             ORDER BY r.rowid LIMIT ?4",
        )
        .bind(trust)
        .bind(after)
        .bind(cutoff)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        let mut rowids = Vec::with_capacity(rows.len());
        let mut purged = Vec::with_capacity(rows.len());
        for r in &rows {
            rowids.push(r.col::<i64, _>(0).map_err(&undecoded)?);
            purged.push(PurgedRevision {
                kind: r.col(1).map_err(&undecoded)?,
                id: r.col(2).map_err(&undecoded)?,
                revision: u32::try_from(r.col::<i64, _>(3).map_err(&undecoded)?).unwrap_or(0),
                school: r.col(4).map_err(&undecoded)?,
                content_hash: r.col(5).map_err(&undecoded)?,
            });
        }
        let at = now();
        if !rowids.is_empty() {
            sqlx::query(
                "UPDATE records SET content = '', purged_at = ?2 \
                 WHERE rowid IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_param(&rowids))
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
            let events = trail(trust, &purged, &at);
            self.append_events(&mut tx, &events).await?;
        }
        tx.commit().await.map_err(&err)?;
        let next = if rowids.len() < limit {
            None
        } else {
            rowids.last().copied()
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
            "SELECT r.rowid, r.id, r.revision, r.school_urn, r.content_hash, r.received_at, \
               CASE WHEN r.purged_at IS NULL THEN r.content END, \
               (SELECT json_group_array(json_array(d.destination, d.state, d.delivered_at)) \
                  FROM deliveries d WHERE d.trust = r.trust AND d.kind = r.kind \
                  AND d.record_id = r.id AND d.revision = r.revision), \
               (SELECT json_group_array(e.rule) FROM exceptions e WHERE e.trust = r.trust \
                  AND e.kind = r.kind AND e.id = r.id AND e.revision = r.revision) \
             FROM records r \
             WHERE r.trust = ?1 AND r.school_urn = ?2 AND r.kind = ?3 AND r.current = 1 \
               AND r.rowid > ?4 \
             ORDER BY r.rowid LIMIT ?5",
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
            let deliveries: Vec<(String, String, Option<String>)> =
                json_col(r.col::<&str, _>(7).map_err(&undecoded)?, "deliveries")
                    .map_err(&undecoded)?;
            out.push(CurrentRevision {
                seq: r.col(0).map_err(&undecoded)?,
                kind,
                id: r.col(1).map_err(&undecoded)?,
                revision: u32::try_from(r.col::<i64, _>(2).map_err(&undecoded)?).unwrap_or(0),
                school: r.col(3).map_err(&undecoded)?,
                content_hash: r.col(4).map_err(&undecoded)?,
                received_at: r.col(5).map_err(&undecoded)?,
                canonical: r.col(6).map_err(&undecoded)?,
                deliveries: deliveries
                    .into_iter()
                    .map(|(destination, state, delivered_at)| DeliveredTo {
                        destination,
                        state,
                        delivered_at,
                    })
                    .collect(),
                exceptions: json_col(r.col::<&str, _>(8).map_err(&undecoded)?, "exceptions")
                    .map_err(&undecoded)?,
            });
        }
        Ok(out)
    }
}

/// A JSON aggregate column read as `T`.
fn json_col<T: serde::de::DeserializeOwned>(
    text: &str,
    column: &str,
) -> Result<T, super::Undecoded> {
    serde_json::from_str(text).map_err(|e| super::Undecoded {
        column: column.to_owned(),
        reason: e.to_string(),
    })
}
