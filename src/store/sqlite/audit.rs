//! The evidence trail's log in SQLite: leaves in bundles of a tile's width, the stored-level
//! nodes, each trust's size; appends in two statements per trust once the edge is known.
//! The events are made by `audit::events` (or the caller) and only appended here.

use sqlx::SqliteConnection;
use std::collections::{BTreeMap, HashMap};

use super::{Col, INSERT_ROWS, SqliteStore, json_param, now};
use crate::store::StoreError;
pub(super) use crate::store::edges::Edges;
use crate::trail::{Event, Tail, tree};

impl SqliteStore {
    pub(super) async fn sql_audit_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT trust, size FROM audit_logs ORDER BY trust")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| Ok((r.col(0)?, u64::try_from(r.col::<i64, _>(1)?).unwrap_or(0))))
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    pub(super) async fn sql_audit_nodes(
        &self,
        trust: &str,
        ids: &[tree::NodeId],
    ) -> Result<HashMap<tree::NodeId, tree::Hash>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(self.db_err())?;
        let tiles = self
            .read_tiles(&mut conn, trust, &tree::tiles_for(ids))
            .await?;
        Ok(tree::nodes_from_tiles(ids, &tiles))
    }

    pub(super) async fn sql_audit_leaves(
        &self,
        trust: &str,
        school: Option<&str>,
        start: u64,
        size: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Whose<'a> {
            #[serde(borrow)]
            school: Option<std::borrow::Cow<'a, str>>,
        }
        let mut rows = sqlx::query(
            "SELECT n, leaves FROM audit_bundles WHERE trust = ?1 AND n >= ?2 AND n < ?3 ORDER BY n",
        )
        .bind(trust)
        .bind((start / tree::TILE_WIDTH) as i64)
        .bind(size.div_ceil(tree::TILE_WIDTH) as i64)
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .map_err(self.db_err())?
        {
            let n: i64 = row.col(0).map_err(self.undecoded())?;
            let leaves: &str = row.col(1).map_err(self.undecoded())?;
            let first = u64::try_from(n).unwrap_or(0) * tree::TILE_WIDTH;
            for (idx, leaf) in (first..size).zip(leaves.split('\n')) {
                if idx < start {
                    continue;
                }
                if let Some(school) = school {
                    // Every leaf is written by `Event::leaf`; one that does not read is a
                    // corrupt store.
                    let w: Whose = serde_json::from_str(leaf).map_err(|e| StoreError::Io {
                        location: self.path.display().to_string(),
                        reason: format!("audit leaf {trust}/{idx} is not an event: {e}"),
                    })?;
                    if w.school.as_deref() != Some(school) {
                        continue;
                    }
                }
                out.push((idx, leaf.to_owned()));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn sql_audit_append(
        &self,
        events: &[Event],
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let err = self.db_err();
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let sizes = self.append_events(&mut tx, events).await?;
        tx.commit().await.map_err(&err)?;
        Ok(sizes)
    }

    pub(super) async fn sql_audit_save_checkpoint(
        &self,
        trust: &str,
        size: u64,
        note: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT OR IGNORE INTO audit_checkpoints (trust, size, at, note) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(trust)
        .bind(size as i64)
        .bind(now())
        .bind(note)
        .execute(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(())
    }
}

impl SqliteStore {
    /// Appends events to their trusts' logs: sequenced (`trail::Tail`: each school's
    /// `school_seq`, times never going back), leaves into their bundles, the stored-level
    /// nodes they complete, new sizes — which it returns, by trust.
    pub(super) async fn append_events(
        &self,
        conn: &mut SqliteConnection,
        events: &[Event],
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let err = self.db_err();
        let mut by_trust: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for e in events {
            by_trust
                .entry(e.trust.as_str())
                .or_default()
                .push(e.clone());
        }
        let mut sizes = BTreeMap::new();
        for (trust, events) in by_trust {
            let added = events.len() as i64;
            // The edge this store left, if the log still bears its mark; else read back.
            let (mut edge, last_at) = match self.edges.take(trust) {
                Some((edge, last_at)) if self.claim_edge(conn, trust, &edge, added).await? => {
                    (edge, last_at)
                }
                _ => {
                    let (edge, last_at) = self.read_edge(conn, trust).await?;
                    sqlx::query(
                        "INSERT INTO audit_logs (trust, size, writer) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (trust) DO UPDATE SET size = excluded.size, writer = excluded.writer",
                    )
                    .bind(trust)
                    .bind(edge.size() as i64 + added)
                    .bind(self.edges.writer)
                    .execute(&mut *conn)
                    .await
                    .map_err(&err)?;
                    (edge, last_at)
                }
            };
            let mut tail = Tail {
                last_at,
                next_seq: self.school_seqs(conn, trust, &events).await?,
            };
            let events = tail.sequence(&events);
            let size = edge.size();
            // Leaves joined into their bundles; the first may continue the last stored bundle.
            let mut made = Vec::new();
            let mut bundles: Vec<(i64, String)> = Vec::new();
            for (idx, event) in (size..).zip(&events) {
                let leaf = event.leaf();
                edge.push(tree::leaf_hash(leaf.as_bytes()), &mut made);
                let n = (idx / tree::TILE_WIDTH) as i64;
                match bundles.last_mut() {
                    Some((last, text)) if *last == n => {
                        text.push('\n');
                        text.push_str(&leaf);
                    }
                    _ => bundles.push((n, leaf)),
                }
            }
            for chunk in bundles.chunks(INSERT_ROWS) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO audit_bundles (trust, n, leaves) ",
                );
                insert.push_values(chunk, |mut row, (n, leaves)| {
                    row.push_bind(trust)
                        .push_bind(*n)
                        .push_bind(leaves.as_str());
                });
                insert.push(
                    " ON CONFLICT (trust, n) DO UPDATE \
                     SET leaves = audit_bundles.leaves || char(10) || excluded.leaves",
                );
                insert
                    .build()
                    .persistent(false)
                    .execute(&mut *conn)
                    .await
                    .map_err(&err)?;
            }
            for chunk in made.chunks(INSERT_ROWS) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO audit_nodes (trust, level, idx, hash) ",
                );
                insert.push_values(chunk, |mut row, (id, hash)| {
                    row.push_bind(trust)
                        .push_bind(i64::from(id.level))
                        .push_bind(id.index as i64)
                        .push_bind(hash.to_vec());
                });
                insert
                    .build()
                    .persistent(false)
                    .execute(&mut *conn)
                    .await
                    .map_err(&err)?;
            }
            self.save_tail(conn, trust, &tail).await?;
            sizes.insert(trust.to_owned(), edge.size());
            self.edges.keep(trust, edge, tail.last_at);
        }
        Ok(sizes)
    }

    /// The next `school_seq` of each school the events name (absent: none yet).
    async fn school_seqs(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
        events: &[Event],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut schools: Vec<&str> = events.iter().filter_map(|e| e.school.as_deref()).collect();
        schools.sort_unstable();
        schools.dedup();
        if schools.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT s.school, s.next_seq FROM json_each(?2) AS k CROSS JOIN audit_school_seqs AS s \
             WHERE s.trust = ?1 AND s.school = k.value",
        )
        .bind(trust)
        .bind(json_param(&schools))
        .fetch_all(&mut *conn)
        .await
        .map_err(self.db_err())?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.col::<String, _>(0)?,
                    u64::try_from(r.col::<i64, _>(1)?).unwrap_or(0),
                ))
            })
            .collect::<Result<_, _>>()
            .map_err(self.undecoded())
    }

    /// Writes where the log now stands: its last time and its schools' next numbers.
    async fn save_tail(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
        tail: &Tail,
    ) -> Result<(), StoreError> {
        let err = self.db_err();
        sqlx::query("UPDATE audit_logs SET last_at = ?2 WHERE trust = ?1")
            .bind(trust)
            .bind(tail.last_at.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
        let seqs: Vec<(&String, &u64)> = tail.next_seq.iter().collect();
        for chunk in seqs.chunks(INSERT_ROWS) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_school_seqs (trust, school, next_seq) ",
            );
            insert.push_values(chunk, |mut row, (school, next)| {
                row.push_bind(trust)
                    .push_bind(school.as_str())
                    .push_bind(**next as i64);
            });
            insert.push(" ON CONFLICT (trust, school) DO UPDATE SET next_seq = excluded.next_seq");
            insert
                .build()
                .persistent(false)
                .execute(&mut *conn)
                .await
                .map_err(&err)?;
        }
        Ok(())
    }

    /// A log written before leaves were numbered: counts each school's events and finds the
    /// last time, once, so that numbering continues from each school's true position.
    async fn number_old_log(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
    ) -> Result<(), StoreError> {
        #[derive(serde::Deserialize)]
        struct Old<'a> {
            #[serde(borrow)]
            at: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            school: Option<std::borrow::Cow<'a, str>>,
        }
        let mut tail = Tail::default();
        {
            // A bundle of 256 leaves at a time, not the whole log.
            let mut rows = sqlx::query_scalar::<_, String>(
                "SELECT leaves FROM audit_bundles WHERE trust = ?1 ORDER BY n",
            )
            .bind(trust)
            .fetch(&mut *conn);
            let mut i = 0u64;
            while let Some(bundle) = futures_util::TryStreamExt::try_next(&mut rows)
                .await
                .map_err(self.db_err())?
            {
                for leaf in bundle.split('\n') {
                    let old: Old = serde_json::from_str(leaf).map_err(|e| StoreError::Io {
                        location: self.path.display().to_string(),
                        reason: format!("audit leaf {trust}/{i} is not an event: {e}"),
                    })?;
                    let mut e = Event::new(crate::trail::EventType::Received, &old.at, trust);
                    e.school = old.school.map(std::borrow::Cow::into_owned);
                    tail.sequence(std::slice::from_ref(&e));
                    i += 1;
                }
            }
        }
        self.save_tail(conn, trust, &tail).await?;
        sqlx::query("UPDATE audit_logs SET numbered = 1 WHERE trust = ?1")
            .bind(trust)
            .execute(&mut *conn)
            .await
            .map_err(self.db_err())?;
        Ok(())
    }

    /// Moves the log's size on by `added` if it still bears this store's mark at the edge's
    /// size: then the edge in memory is the log's.
    async fn claim_edge(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
        edge: &tree::Edge,
        added: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE audit_logs SET size = size + ?2 WHERE trust = ?1 AND size = ?3 AND writer = ?4",
        )
        .bind(trust)
        .bind(added)
        .bind(edge.size() as i64)
        .bind(self.edges.writer)
        .execute(&mut *conn)
        .await
        .map_err(self.db_err())?;
        Ok(done.rows_affected() == 1)
    }

    /// The right edge of a trust's log and its last event time, read from the store (a log
    /// from before numbering is numbered first).
    async fn read_edge(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
    ) -> Result<(tree::Edge, Option<String>), StoreError> {
        let row: Option<(i64, Option<String>, i64)> =
            sqlx::query_as("SELECT size, last_at, numbered FROM audit_logs WHERE trust = ?1")
                .bind(trust)
                .fetch_optional(&mut *conn)
                .await
                .map_err(self.db_err())?;
        let (size, mut last_at, numbered) = row.unwrap_or((0, None, 1));
        if numbered == 0 {
            self.number_old_log(conn, trust).await?;
            last_at = sqlx::query_scalar("SELECT last_at FROM audit_logs WHERE trust = ?1")
                .bind(trust)
                .fetch_one(&mut *conn)
                .await
                .map_err(self.db_err())?;
        }
        let size = u64::try_from(size).unwrap_or(0);
        let tiles: Vec<tree::TileId> = tree::Edge::tiles(size).into_iter().map(|t| t.0).collect();
        let read = self.read_tiles(conn, trust, &tiles).await?;
        let edge = tree::Edge::new(size, read).map_err(|tile| {
            (self.db_err())(sqlx::Error::Protocol(format!(
                "the evidence trail of trust {trust} lacks nodes of tile {}/{} below size {size}: \
             the store is damaged",
                tile.level, tile.index
            )))
        })?;
        Ok((edge, last_at))
    }

    /// The stored nodes of `tiles`, each from its first: leaf hashes from a bundle's leaves
    /// (level 0), stored hashes above. A tile comes back short where the store has fewer.
    async fn read_tiles(
        &self,
        conn: &mut SqliteConnection,
        trust: &str,
        tiles: &[tree::TileId],
    ) -> Result<HashMap<tree::TileId, Vec<tree::Hash>>, StoreError> {
        let err = self.db_err();
        let mut out = HashMap::with_capacity(tiles.len());
        let bundles: Vec<i64> = tiles
            .iter()
            .filter(|t| t.level == 0)
            .map(|t| t.index as i64)
            .collect();
        if !bundles.is_empty() {
            // json_each drives (CROSS JOIN keeps it the outer loop): one primary-key lookup per
            // wanted bundle, whatever the size of the log.
            let rows = sqlx::query(
                "SELECT b.n, b.leaves FROM json_each(?2) AS k CROSS JOIN audit_bundles AS b \
             WHERE b.trust = ?1 AND b.n = k.value",
            )
            .bind(trust)
            .bind(json_param(&bundles))
            .fetch_all(&mut *conn)
            .await
            .map_err(&err)?;
            for row in &rows {
                let tile = tree::TileId {
                    level: 0,
                    index: u64::try_from(row.col::<i64, _>(0).map_err(self.undecoded())?)
                        .unwrap_or(0),
                };
                let leaves: &str = row.col(1).map_err(self.undecoded())?;
                let hashes = leaves
                    .split('\n')
                    .map(|leaf| tree::leaf_hash(leaf.as_bytes()))
                    .collect();
                out.insert(tile, hashes);
            }
        }
        let spans: Vec<(u32, u64, u64)> = tiles
            .iter()
            .filter(|t| t.level > 0)
            .map(|t| {
                let first = t.index * tree::TILE_WIDTH;
                (t.level, first, first + tree::TILE_WIDTH)
            })
            .collect();
        if !spans.is_empty() {
            let rows = sqlx::query(
                "SELECT n.level, n.idx, n.hash FROM json_each(?2) AS k CROSS JOIN audit_nodes AS n \
             WHERE n.trust = ?1 AND n.level = k.value ->> 0 \
               AND n.idx >= k.value ->> 1 AND n.idx < k.value ->> 2 \
             ORDER BY n.level, n.idx",
            )
            .bind(trust)
            .bind(json_param(&spans))
            .fetch_all(&mut *conn)
            .await
            .map_err(&err)?;
            for row in rows {
                let level =
                    u32::try_from(row.col::<i64, _>(0).map_err(self.undecoded())?).unwrap_or(0);
                let idx =
                    u64::try_from(row.col::<i64, _>(1).map_err(self.undecoded())?).unwrap_or(0);
                let Ok(hash) =
                    <tree::Hash>::try_from(row.col::<&[u8], _>(2).map_err(self.undecoded())?)
                else {
                    continue;
                };
                let tile = out
                    .entry(tree::TileId {
                        level,
                        index: idx / tree::TILE_WIDTH,
                    })
                    .or_insert_with(Vec::new);
                // Only an unbroken run from the tile's first node counts.
                if tile.len() as u64 == idx % tree::TILE_WIDTH {
                    tile.push(hash);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::MIGRATOR;
    use super::*;
    use crate::store::Store;
    use crate::trail::EventType;
    use sqlx::SqlitePool;
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;

    fn event(i: u64) -> Event {
        let mut e = Event::new(EventType::Received, "2026-11-25T00:00:00Z", "celt");
        e.record_id = Some(format!("V-{i}"));
        e.school = Some("136401".into());
        e
    }

    /// A store written before the tiles (migration 0006) — one row per leaf, every interior
    /// node — reads the same tree after migrating, and appends continue it.
    #[tokio::test]
    async fn a_store_from_before_the_tiles_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        MIGRATOR.run_to(5, &pool).await.unwrap();
        let old: Vec<String> = (0..600).map(|i| event(i).leaf()).collect();
        let hashes: Vec<tree::Hash> = old.iter().map(|l| tree::leaf_hash(l.as_bytes())).collect();
        for (idx, leaf) in old.iter().enumerate() {
            sqlx::query("INSERT INTO audit_leaves (trust, idx, leaf) VALUES ('celt', ?1, ?2)")
                .bind(idx as i64)
                .bind(leaf)
                .execute(&pool)
                .await
                .unwrap();
        }
        let levels = tree::levels_above(hashes.clone(), 64);
        for (level, nodes) in levels.iter().enumerate().skip(1) {
            for (idx, hash) in nodes.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO audit_nodes (trust, level, idx, hash) VALUES ('celt', ?1, ?2, ?3)",
                )
                .bind(level as i64)
                .bind(idx as i64)
                .bind(hash.to_vec())
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        sqlx::query("INSERT INTO audit_logs (trust, size) VALUES ('celt', 600)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let mut want = tree::MemoryTree::default();
        want.append(&hashes).unwrap();
        let ids = tree::nodes_for(&tree::inclusion_ranges(300, 600));
        let got = store.audit_nodes("celt", &ids).await.unwrap();
        assert_eq!(got, want.nodes(&ids));
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_nodes")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 2, "only level-8 nodes are kept");

        // Appends go on from the migrated edge, in memory and after reopening.
        let more: Vec<Event> = (600..900).map(event).collect();
        store.audit_append(&more[..100]).await.unwrap();
        store.audit_append(&more[100..]).await.unwrap();
        let reopened = SqliteStore::open(&path).await.unwrap();
        reopened.audit_append(&[event(900)]).await.unwrap();
        // Numbered from each school's true position: the 600 old leaves were counted.
        let mut tail = Tail {
            last_at: Some("2026-11-25T00:00:00Z".into()),
            next_seq: HashMap::from([("136401".to_owned(), 600)]),
        };
        let added: Vec<tree::Hash> = tail
            .sequence(&(600..=900).map(event).collect::<Vec<_>>())
            .iter()
            .map(|e| tree::leaf_hash(e.leaf().as_bytes()))
            .collect();
        want.append(&added).unwrap();
        let root = tree::root_nodes(901);
        let got = reopened.audit_nodes("celt", &root).await.unwrap();
        assert_eq!(got, want.nodes(&root));
        let entries = reopened
            .audit_leaves("celt", Some("136401"), 0, 901, usize::MAX)
            .await
            .unwrap();
        assert_eq!(entries.len(), 901);
        assert_eq!(entries[599].1, old[599]);
        assert!(
            entries[600].1.contains(r#""school_seq":600"#),
            "{}",
            entries[600].1
        );
        assert!(entries[900].1.contains(r#""school_seq":900"#));
    }

    /// A rolled-back append leaves the next one to read the edge back rather than trust the
    /// edge it kept in memory.
    #[tokio::test]
    async fn an_append_rolled_back_is_not_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        store.audit_append(&[event(0), event(1)]).await.unwrap();
        let mut tx = store.pool.begin().await.unwrap();
        store.append_events(&mut tx, &[event(99)]).await.unwrap();
        tx.rollback().await.unwrap();
        store.audit_append(&[event(2)]).await.unwrap();
        let mut want = tree::MemoryTree::default();
        let hashes: Vec<tree::Hash> = Tail::default()
            .sequence(&(0..3).map(event).collect::<Vec<_>>())
            .iter()
            .map(|e| tree::leaf_hash(e.leaf().as_bytes()))
            .collect();
        want.append(&hashes).unwrap();
        let root = tree::root_nodes(3);
        assert_eq!(
            store.audit_nodes("celt", &root).await.unwrap(),
            want.nodes(&root)
        );
        assert_eq!(store.audit_sizes().await.unwrap(), vec![("celt".into(), 3)]);
    }
}
