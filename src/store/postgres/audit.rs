//! The evidence trail's log in PostgreSQL, as in SQLite (leaves in bundles of a tile's
//! width, the stored-level nodes, each trust's size), with one addition for several
//! writers: every append first takes the row lock on the trust's log head
//! ([`PgStore::lock_heads`]) and holds it until its transaction commits. Positions are
//! therefore given out one transaction at a time, in commit order: the log stays one linear
//! tree, and a transaction that rolls back gives its positions back (no SEQUENCE, no gap).

use std::collections::{BTreeMap, HashMap};

use sqlx::PgConnection;

use super::{Col, INSERT_ROWS, PgStore, now};
use crate::store::StoreError;
use crate::trail::{Event, Tail, tree};

impl PgStore {
    pub(super) async fn sql_audit_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT trust, size FROM audit_logs WHERE size > 0 ORDER BY trust")
                .fetch_all(&self.pool)
                .await
                .map_err(self.db_err())?;
        Ok(rows
            .into_iter()
            .map(|(t, s)| (t, u64::try_from(s).unwrap_or(0)))
            .collect())
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
            "SELECT n, leaves FROM audit_bundles WHERE trust = $1 AND n >= $2 AND n < $3 ORDER BY n",
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
                    let w: Whose = serde_json::from_str(leaf).map_err(|e| StoreError::Io {
                        location: self.location().to_owned(),
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
        let mut tx = self.pool.begin().await.map_err(&err)?;
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
        sqlx::query(
            "INSERT INTO audit_checkpoints (trust, size, at, note) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (trust, size) DO NOTHING",
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

    /// Appends events to their trusts' logs under each log head's row lock (taken here if
    /// the transaction does not hold it yet): sequenced (`trail::Tail`), leaves into their
    /// bundles, the stored-level nodes they complete, new sizes — returned by trust.
    pub(super) async fn append_events(
        &self,
        conn: &mut PgConnection,
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
        self.lock_heads(conn, by_trust.keys().copied()).await?;
        let mut sizes = BTreeMap::new();
        for (trust, events) in by_trust {
            let (size, writer, last_at): (i64, i64, Option<String>) =
                sqlx::query_as("SELECT size, writer, last_at FROM audit_logs WHERE trust = $1")
                    .bind(trust)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(&err)?;
            let size = u64::try_from(size).unwrap_or(0);
            // The edge this process left, if the head still bears its mark; else read back.
            let mut edge = match self.edges.take(trust) {
                Some((edge, _)) if writer == self.edges.writer && edge.size() == size => edge,
                _ => self.read_edge(conn, trust, size).await?,
            };
            let mut tail = Tail {
                last_at,
                next_seq: self.school_seqs(conn, trust, &events).await?,
            };
            let events = tail.sequence(&events);
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
                let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                    "INSERT INTO audit_bundles (trust, n, leaves) ",
                );
                insert.push_values(chunk, |mut row, (n, leaves)| {
                    row.push_bind(trust)
                        .push_bind(*n)
                        .push_bind(leaves.as_str());
                });
                insert.push(
                    " ON CONFLICT (trust, n) DO UPDATE \
                     SET leaves = audit_bundles.leaves || chr(10) || excluded.leaves",
                );
                insert
                    .build()
                    .persistent(false)
                    .execute(&mut *conn)
                    .await
                    .map_err(&err)?;
            }
            for chunk in made.chunks(INSERT_ROWS) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
            sqlx::query(
                "UPDATE audit_logs SET size = $2, writer = $3, last_at = $4 WHERE trust = $1",
            )
            .bind(trust)
            .bind(edge.size() as i64)
            .bind(self.edges.writer)
            .bind(tail.last_at.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
            self.save_seqs(conn, trust, &tail).await?;
            sizes.insert(trust.to_owned(), edge.size());
            self.edges.keep(trust, edge, tail.last_at);
        }
        Ok(sizes)
    }

    /// The next `school_seq` of each school the events name (absent: none yet).
    async fn school_seqs(
        &self,
        conn: &mut PgConnection,
        trust: &str,
        events: &[Event],
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut schools: Vec<&str> = events.iter().filter_map(|e| e.school.as_deref()).collect();
        schools.sort_unstable();
        schools.dedup();
        if schools.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT school, next_seq FROM audit_school_seqs WHERE trust = $1 AND school = ANY($2)",
        )
        .bind(trust)
        .bind(&schools)
        .fetch_all(&mut *conn)
        .await
        .map_err(self.db_err())?;
        Ok(rows
            .into_iter()
            .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Writes each school's next number.
    async fn save_seqs(
        &self,
        conn: &mut PgConnection,
        trust: &str,
        tail: &Tail,
    ) -> Result<(), StoreError> {
        let (schools, next): (Vec<&str>, Vec<i64>) = tail
            .next_seq
            .iter()
            .map(|(s, n)| (s.as_str(), *n as i64))
            .unzip();
        if schools.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit_school_seqs (trust, school, next_seq) \
             SELECT $1, s, n FROM unnest($2::text[], $3::bigint[]) AS u(s, n) \
             ON CONFLICT (trust, school) DO UPDATE SET next_seq = excluded.next_seq",
        )
        .bind(trust)
        .bind(&schools)
        .bind(&next)
        .execute(&mut *conn)
        .await
        .map_err(self.db_err())?;
        Ok(())
    }

    /// The right edge of a trust's log of `size` leaves, read from the store.
    async fn read_edge(
        &self,
        conn: &mut PgConnection,
        trust: &str,
        size: u64,
    ) -> Result<tree::Edge, StoreError> {
        let tiles: Vec<tree::TileId> = tree::Edge::tiles(size).into_iter().map(|t| t.0).collect();
        let read = self.read_tiles(conn, trust, &tiles).await?;
        tree::Edge::new(size, read).map_err(|tile| StoreError::Io {
            location: self.location().to_owned(),
            reason: format!(
                "the evidence trail of trust {trust} lacks nodes of tile {}/{} below size {size}: \
                 the store is damaged",
                tile.level, tile.index
            ),
        })
    }

    /// The stored nodes of `tiles`, each from its first: leaf hashes from a bundle's leaves
    /// (level 0), stored hashes above. A tile comes back short where the store has fewer.
    async fn read_tiles(
        &self,
        conn: &mut PgConnection,
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
            let rows =
                sqlx::query("SELECT n, leaves FROM audit_bundles WHERE trust = $1 AND n = ANY($2)")
                    .bind(trust)
                    .bind(&bundles)
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
        let (levels, firsts): (Vec<i64>, Vec<i64>) = tiles
            .iter()
            .filter(|t| t.level > 0)
            .map(|t| (i64::from(t.level), (t.index * tree::TILE_WIDTH) as i64))
            .unzip();
        if !levels.is_empty() {
            let rows = sqlx::query(
                "SELECT n.level, n.idx, n.hash FROM unnest($2::bigint[], $3::bigint[]) AS k(level, first) \
                 JOIN audit_nodes n ON n.trust = $1 AND n.level = k.level \
                   AND n.idx >= k.first AND n.idx < k.first + $4 \
                 ORDER BY n.level, n.idx",
            )
            .bind(trust)
            .bind(&levels)
            .bind(&firsts)
            .bind(tree::TILE_WIDTH as i64)
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
                if tile.len() as u64 == idx % tree::TILE_WIDTH {
                    tile.push(hash);
                }
            }
        }
        Ok(out)
    }
}
