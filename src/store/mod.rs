//! The online store: RocksDB, one column family per concern.
//!
//! State and the source offsets that produced it are written in one atomic `WriteBatch` ([`StateBatch`]), so a
//! crash can never separate them: on restart a source resumes exactly after the last event whose effect is
//! stored. Key and value layouts are in [`codec`].

pub mod codec;
mod view;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, ReadOptions, WriteBatch};

use crate::error::{Error, Result};
use crate::schema::{IdEmbedding, Item, ItemEmbedding};
pub use codec::{
    Codebooks, HistoryEntry, InterestCluster, ItemStats, ListHead, ListPosition, LogRow, ModelInfo,
    TeacherTarget, UserHeads, UserInterests,
};
pub use view::{SemanticIds, StoreView};

/// On-disk format this build writes. Bumped when a layout changes incompatibly.
/// 2: user histories and positives hold one key per entry (format 1: one list value per user); a writer opening
/// a format-1 store upgrades it in place.
/// 3: every item-level write (embedding, semantic IDs, teacher targets) also writes the item's stamp
/// ([`cf::ITEM_STAMPS`]), which lets lookups keep decoded items between requests; the upgrade stamps every
/// embedded item.
/// 4: a user's two list heads are one value under the history's head key ([`UserHeads`]); `user_positives` holds
/// entries only. Ingest rewrites both heads whenever an event is positive, so this is one key less per positive
/// event, and one read instead of two for a user it has not cached. The upgrade moves each positives head.
/// Heads and item counters are written as varints (value v2; v1 counters still read), so that the values ingest
/// rewrites with every event are a third of their fixed-width size, and list entries (v2; v1 still read) no
/// longer repeat the ts their key holds.
pub const FORMAT_VERSION: u32 = 4;
const FORMAT_KEY: &[u8] = b"format_version";

/// Column families, one per concern.
pub mod cf {
    pub const META: &str = "meta";
    pub const OFFSETS: &str = "offsets";
    pub const ITEMS: &str = "items";
    pub const ITEM_STATS: &str = "item_stats";
    pub const ITEM_USERS: &str = "item_users";
    pub const USER_HISTORIES: &str = "user_histories";
    pub const USER_POSITIVES: &str = "user_positives";
    pub const ID_EMBEDDINGS: &str = "id_embeddings";
    pub const ITEM_EMBEDDINGS: &str = "item_embeddings";
    pub const USER_INTERESTS: &str = "user_interests";
    pub const TEACHER_TARGETS: &str = "teacher_targets";
    pub const SEMANTIC_IDS: &str = "semantic_ids";
    pub const JOB_STATE: &str = "job_state";
    pub const LOG_PENDING: &str = "log_pending";
    pub const EMBED_PENDING: &str = "embed_pending";
    pub const INTERESTS_PENDING: &str = "interests_pending";
    /// Per item, a value that changes with every write to the item's embedding, semantic IDs or teacher
    /// targets (in the same batch): a reader holding a decoded copy checks it is still current with one small
    /// read instead of reading the item's values again.
    pub const ITEM_STAMPS: &str = "item_stamps";

    pub const ALL: [&str; 17] = [
        META,
        OFFSETS,
        ITEMS,
        ITEM_STATS,
        ITEM_USERS,
        USER_HISTORIES,
        USER_POSITIVES,
        ID_EMBEDDINGS,
        ITEM_EMBEDDINGS,
        USER_INTERESTS,
        TEACHER_TARGETS,
        SEMANTIC_IDS,
        JOB_STATE,
        LOG_PENDING,
        EMBED_PENDING,
        INTERESTS_PENDING,
        ITEM_STAMPS,
    ];
}

pub struct Store {
    db: DB,
    path: PathBuf,
    access: Access,
    /// Secondary instances only: reads hold it shared for a whole request, catch-up holds it exclusively, so a
    /// request never sees half of a catch-up (RocksDB offers no snapshots on secondaries).
    catch_up: RwLock<()>,
    /// Secondary instances: a fingerprint of the primary's files at the last catch-up.
    files_at_catch_up: Mutex<Option<u64>>,
    /// The next item stamp this process writes: starts at a random value, so that stamps from different
    /// processes (and restarts) do not repeat one another.
    next_stamp: AtomicU64,
    /// The interests marks this process has deleted, for ingest's record of which marks are still there.
    interests_unmarked: Mutex<UnmarkLog>,
}

/// Which users' "interests pending" marks ([`cf::INTERESTS_PENDING`]) this process deleted, newest last: ingest
/// skips rewriting a mark it knows is still in the store (a backfill would otherwise write one for every
/// positive event), and learns here when one is gone. Each batch that deletes marks is one generation, recorded
/// as it commits. Only the newest [`UnmarkLog::KEPT`] deletes are kept; a reader that fell further behind is told
/// to forget everything it knew about marks. This only works because every mark is deleted through
/// [`StateBatch::delete_interests_pending`], by the one process that may write the store.
#[derive(Debug, Default)]
struct UnmarkLog {
    generation: u64,
    recent: VecDeque<(u64, String)>,
}

impl UnmarkLog {
    const KEPT: usize = 1 << 16;
}

/// What [`Store::interests_unmarked_since`] answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmarked {
    /// Nothing deleted since the generation asked about.
    Nothing,
    /// These users' marks were deleted since then (a user may appear more than once).
    Users(Vec<String>),
    /// More was deleted than the store kept a record of: no mark is known to be there any more.
    TooMany,
}

/// How this process holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The one writer (worker, replay, jobs). Reads through [`Store::view`] use a RocksDB snapshot.
    Primary,
    /// A static view: a checkpoint, or the live store as of the moment it was opened.
    ReadOnly,
    /// Follows a live primary from another process; [`Store::catch_up`] applies what the primary wrote since.
    Secondary,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("access", &self.access)
            .finish()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // L0 files are flushed memtables that compaction soon reads back and rewrites: compressed, they would cost
    // CPU at flush and again at compaction (LZ4 was a fifth of every flush in a replay profile). Deeper levels
    // hold the data that stays: LZ4, and Zstd at the bottom, where most of it ends up.
    opts.set_compression_per_level(&[
        rocksdb::DBCompressionType::None,
        rocksdb::DBCompressionType::Lz4,
    ]);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts.increase_parallelism(2);
    opts
}

/// One block cache for every column family of a store (filled as used, never preallocated). RocksDB's default
/// is a separate 32 MiB per family, which starves the one that matters for lookups (item embeddings, 3.5 KB
/// each) while the others sit idle; shared, the hot family can use it all.
const BLOCK_CACHE_BYTES: usize = 512 << 20;

fn cf_options(name: &str, cache: &rocksdb::Cache) -> Options {
    let mut opts = db_options();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Families that are only ever scanned (list entries, work queues) get no bloom filters: nothing would
    // consult them, and building them costs every insert a hash and every flush and compaction a filter.
    let scanned_only = SCANNED_ONLY.contains(&name);
    if name != cf::META && name != cf::OFFSETS && !scanned_only {
        // Point lookups dominate (serving, read-modify-write in ingest): bloom filters save disk reads.
        table.set_bloom_filter(10.0, false);
    }
    opts.set_block_based_table_factory(&table);
    if !scanned_only {
        // A whole-key bloom filter per memtable: most lookups ingest makes (has this user touched this item?
        // this item's counters from this partition?) miss the newest memtables, and without a filter each miss
        // walks the skiplist (cache misses all the way: 40% of replay time in a profile before this was set).
        opts.set_memtable_prefix_bloom_ratio(0.02);
        opts.set_memtable_whole_key_filtering(true);
    }
    // Small memtables, flushed several at a time. Ingest inserts ~5 keys per event at random places in each
    // family's skiplist; in RocksDB's default 64 MiB memtable every insert walks nodes that are no longer in
    // the CPU cache (the splice search was a quarter of replay time), while the active memtables of all
    // families together at 2 MiB each stay within L3. Merging 8 of them per flush keeps table files (and so
    // the compaction shape) as with one 16 MiB memtable; room for 3 more lets writes go on while a flush
    // runs. Replay measured ~+40% over the default with 4 MiB, and 2 MiB another +6% once the state cache
    // had shrunk (8 MiB: -15%; BENCHMARKS.md).
    //
    // `log_pending` is the exception: offline-log rows are appended in sequence order, so inserts stay at the
    // skiplist's end (no cache-miss walks) and a large memtable costs nothing per insert. In a large one, more
    // rows are still in memory when the roll's range delete covers them, and the flush drops them instead of
    // writing them to table files that compaction then rewrites only to delete. Measured: log-on replay ~+10%
    // events per CPU-second over 4 MiB memtables here (BENCHMARKS.md).
    let (memtable_bytes, per_flush, most) = if name == cf::LOG_PENDING {
        (LOG_MEMTABLE_BYTES, 1, 3)
    } else {
        // Compact L0 into L1 when 8 files (128 MiB) wait, not RocksDB's 4. Ingest's keys land all over each
        // family, so every L0 -> L1 compaction rewrites nearly all of L1: twice the L0 files per compaction
        // is half the L1 rewrites. Replay measured ~+10% events per CPU-second, flushes and compactions
        // counted to the end (BENCHMARKS.md); a point read checks up to 8 L0 bloom filters instead of 4.
        opts.set_level_zero_file_num_compaction_trigger(8);
        (MEMTABLE_BYTES, MEMTABLES_PER_FLUSH, MEMTABLES_PER_FLUSH + 3)
    };
    opts.set_write_buffer_size(memtable_bytes);
    opts.set_min_write_buffer_number_to_merge(per_flush);
    opts.set_max_write_buffer_number(most);
    opts
}

/// Families read only by iterators, never by key: user positives (entries only since format 4; their heads are
/// in `user_histories`) and the work queues.
const SCANNED_ONLY: [&str; 4] = [
    cf::USER_POSITIVES,
    cf::INTERESTS_PENDING,
    cf::EMBED_PENDING,
    cf::LOG_PENDING,
];

const LOG_MEMTABLE_BYTES: usize = 64 << 20;

const MEMTABLE_BYTES: usize = 2 << 20;
const MEMTABLES_PER_FLUSH: i32 = 8;

/// Every family with its options, for any open mode: readers need the same table options as the writer (the
/// bloom filter policy, or the filters written into the files go unused).
fn descriptors(names: &[String]) -> Vec<ColumnFamilyDescriptor> {
    descriptors_with_cache(names, &rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES))
}

fn descriptors_with_cache(names: &[String], cache: &rocksdb::Cache) -> Vec<ColumnFamilyDescriptor> {
    names
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_options(n, cache)))
        .collect()
}

impl Store {
    /// The handle around an open database, for every open mode.
    fn with_db(db: DB, path: PathBuf, access: Access) -> Store {
        Store {
            db,
            path,
            access,
            catch_up: RwLock::new(()),
            files_at_catch_up: Mutex::new(None),
            next_stamp: AtomicU64::new(random_u64()),
            interests_unmarked: Mutex::new(UnmarkLog::default()),
        }
    }

    /// The latest generation of interests-mark deletes (see [`Store::interests_unmarked_since`]).
    pub fn interests_unmarked_generation(&self) -> u64 {
        self.unmark_log().generation
    }

    /// Whose interests marks this process deleted after `generation`, and the generation that answer is
    /// current as of. Ingest calls it before each batch: a mark it remembers writing is still in the store
    /// unless it is named here.
    pub fn interests_unmarked_since(&self, generation: u64) -> (Unmarked, u64) {
        let log = self.unmark_log();
        let answer = if log.generation == generation {
            Unmarked::Nothing
        } else if log.recent.front().is_none_or(|(g, _)| *g > generation + 1) {
            // The deletes of a generation between ours and the oldest kept were dropped (or the caller's
            // generation is from elsewhere).
            Unmarked::TooMany
        } else {
            let newer = log.recent.iter().rev().take_while(|(g, _)| *g > generation);
            Unmarked::Users(newer.map(|(_, user)| user.clone()).collect())
        };
        (answer, log.generation)
    }

    fn unmark_log(&self) -> std::sync::MutexGuard<'_, UnmarkLog> {
        // The log holds no invariant a panicking holder could break halfway, so a poisoned lock is still usable.
        self.interests_unmarked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens (creating if needed) the store for reading and writing. Only one process may hold it.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating store directory {}", path.display()), e))?;
        let opts = db_options();
        let names = Self::all_cf_names(&opts, &path, true);
        let db = DB::open_cf_descriptors(&opts, &path, descriptors(&names))
            .map_err(|e| open_error(&path, e))?;
        let store = Store::with_db(db, path, Access::Primary);
        store.check_format(true)?;
        Ok(store)
    }

    /// Opens an existing store (or a checkpoint of one) read-only; works while a writer holds the live store.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        require_existing(&path, "")?;
        let opts = db_options();
        let names = Self::all_cf_names(&opts, &path, false);
        let db = DB::open_cf_descriptors_read_only(&opts, &path, descriptors(&names), false)
            .map_err(|e| open_error(&path, e))?;
        let store = Store::with_db(db, path, Access::ReadOnly);
        store.check_format(false)?;
        store.check_families()?;
        Ok(store)
    }

    /// Opens a live store as a RocksDB secondary instance: it reads everything the primary (a running worker)
    /// has written, flushed or not, as of the last [`Store::catch_up`]. `scratch` is a directory of its own for
    /// the instance's info log; several secondaries need several directories.
    pub fn open_secondary(path: impl AsRef<Path>, scratch: impl AsRef<Path>) -> Result<Store> {
        Self::open_secondary_with_cache(
            path.as_ref(),
            scratch.as_ref(),
            &rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES),
        )
    }

    /// Two secondary instances of one live store (scratch directories `a` and `b` under `scratch`) sharing one
    /// block cache: blocks are cached by the table file they come from, so what one instance read the other
    /// finds too. A lookup server lets them take turns catching up.
    pub fn open_secondary_pair(
        path: impl AsRef<Path>,
        scratch: impl AsRef<Path>,
    ) -> Result<(Store, Store)> {
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let (path, scratch) = (path.as_ref(), scratch.as_ref());
        Ok((
            Self::open_secondary_with_cache(path, &scratch.join("a"), &cache)?,
            Self::open_secondary_with_cache(path, &scratch.join("b"), &cache)?,
        ))
    }

    fn open_secondary_with_cache(
        path: &Path,
        scratch: &Path,
        cache: &rocksdb::Cache,
    ) -> Result<Store> {
        let path = path.to_path_buf();
        require_existing(&path, "; start the worker or a replay first")?;
        std::fs::create_dir_all(scratch).map_err(|e| {
            Error::io(
                format!("creating secondary scratch directory {}", scratch.display()),
                e,
            )
        })?;
        let mut opts = db_options();
        // Secondaries must keep every table file open: the primary may delete a file after compaction while a
        // read still needs it.
        opts.set_max_open_files(-1);
        let names = Self::all_cf_names(&opts, &path, false);
        let db = DB::open_cf_descriptors_as_secondary(
            &opts,
            path.as_path(),
            scratch,
            descriptors_with_cache(&names, cache),
        )
        .map_err(|e| open_error(&path, e))?;
        let store = Store::with_db(db, path, Access::Secondary);
        store.check_format(false)?;
        store.check_families()?;
        Ok(store)
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Secondary instances: applies what the primary wrote since the last call (whole write batches only, so
    /// state and offsets stay together). Waits for in-flight [`StoreView`]s and holds new ones back while it
    /// runs, so it is skipped when none of the primary's files (WAL, MANIFEST, tables) changed since the last
    /// one: catching up with an idle primary held requests back every interval (the lookup benchmark's open-loop
    /// tail). Returns whether the store may hold new data: false only for a skipped catch-up; always true for
    /// the primary, which changes under its own writes.
    pub fn catch_up(&self) -> Result<bool> {
        if self.access != Access::Secondary {
            return Ok(self.access == Access::Primary);
        }
        // Taken before catching up: a write after it changes a file, so the next call catches up again.
        let files = files_fingerprint(&self.path)?;
        let mut last = self
            .files_at_catch_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == Some(files) {
            return Ok(false);
        }
        {
            let _exclusive = self
                .catch_up
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.db
                .try_catch_up_with_primary()
                .map_err(|e| Error::rocks("catching up with the primary", e))?;
        }
        *last = Some(files);
        Ok(true)
    }

    /// A consistent view for a group of reads (one lookup request): a snapshot on the primary, the catch-up lock
    /// on a secondary, the store itself when read-only.
    pub fn view(&self) -> StoreView<'_> {
        StoreView::new(self)
    }

    /// Every model version that has written embeddings into this store.
    pub fn models(&self) -> Result<Vec<ModelInfo>> {
        let prefix = codec::MODEL_INFO_PREFIX;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf::META)?,
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for entry in iter {
            let (k, v) = entry.map_err(|e| Error::rocks("reading model registry", e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(codec::decode_model_info(&v)?);
        }
        Ok(out)
    }

    /// The writer: ours (created when missing) plus any family a newer build added (RocksDB refuses to open
    /// without naming them all). Readers: the families the store has, since they cannot create one; a store
    /// from an older build then opens and says which format it has instead of failing on a missing family.
    fn all_cf_names(opts: &Options, path: &Path, writer: bool) -> Vec<String> {
        let existing = DB::list_cf(opts, path).ok();
        if !writer && let Some(existing) = &existing {
            return existing
                .iter()
                .filter(|n| *n != "default")
                .cloned()
                .collect();
        }
        let mut names: Vec<String> = cf::ALL.iter().map(|s| s.to_string()).collect();
        if let Some(existing) = existing {
            for name in existing {
                if name != "default" && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// Readers open the families the store has (see [`Store::all_cf_names`]); after the format check, one of
    /// ours still missing means a writer is creating the store right now (RocksDB adds the families one by one).
    fn check_families(&self) -> Result<()> {
        match cf::ALL
            .iter()
            .find(|name| self.db.cf_handle(name).is_none())
        {
            None => Ok(()),
            Some(missing) => Err(Error::invalid(
                "store path",
                format!(
                    "{} has no `{missing}` family yet: a writer is still creating the store (or it is not a \
                     sailstream store)",
                    self.path.display()
                ),
            )),
        }
    }

    fn check_format(&self, write_if_missing: bool) -> Result<()> {
        let meta = self.cf(cf::META)?;
        match self
            .db
            .get_cf(meta, FORMAT_KEY)
            .map_err(|e| Error::rocks("reading format version", e))?
        {
            Some(raw) => {
                let found = u32::from_be_bytes(raw.as_slice().try_into().map_err(|_| {
                    Error::StoreCorrupt {
                        context: "format_version is not 4 bytes".into(),
                    }
                })?);
                if found > FORMAT_VERSION {
                    return Err(Error::StoreFormatTooNew {
                        path: self.path.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found < FORMAT_VERSION {
                    if self.access != Access::Primary {
                        return Err(Error::StoreFormatTooOld {
                            path: self.path.clone(),
                            found,
                            supported: FORMAT_VERSION,
                        });
                    }
                    if found < 2 {
                        self.upgrade_user_lists()?;
                    }
                    if found < 3 {
                        self.stamp_embedded_items()?;
                    }
                    if found < 4 {
                        self.merge_list_heads()?;
                    }
                    self.db
                        .put_cf(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes())
                        .map_err(|e| Error::rocks("writing format version", e))?;
                    tracing::info!(path = %self.path.display(), from = found, to = FORMAT_VERSION,
                        "store format upgraded");
                }
                Ok(())
            }
            None if write_if_missing => self
                .db
                .put_cf(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes())
                .map_err(|e| Error::rocks("writing format version", e)),
            None => Ok(()),
        }
    }

    /// Format 1 -> 2: each user's list value becomes a head plus one key per entry. Each user moves in one
    /// batch (old key deleted with the new ones written), so an interrupted upgrade resumes where it stopped.
    fn upgrade_user_lists(&self) -> Result<()> {
        for family in [cf::USER_HISTORIES, cf::USER_POSITIVES] {
            let handle = self.cf(family)?;
            // The iterator reads an implicit snapshot, so the batches written meanwhile do not disturb it.
            let old = self.db.iterator_cf(
                handle,
                IteratorMode::From(&[codec::KEY_V1], rocksdb::Direction::Forward),
            );
            let mut batch = self.batch();
            let mut users = 0;
            for entry in old {
                let (key, value) =
                    entry.map_err(|e| Error::rocks(format!("reading format-1 {family}"), e))?;
                if key.first() != Some(&codec::KEY_V1) {
                    break;
                }
                let user = codec::decode_id_key(&key)?;
                // Heads in format 2's layout (entries already as today): the format-4 step merges them.
                let entries = codec::decode_history(&value)?;
                batch.put_format3_list(family, user, &entries, codec::encode_list_entry)?;
                batch.batch.delete_cf(handle, &key);
                users += 1;
                if users % 1_000 == 0 {
                    std::mem::replace(&mut batch, self.batch()).commit()?;
                }
            }
            batch.commit()?;
        }
        Ok(())
    }

    /// Format 3 -> 4: each user's positives head moves into the value under the history's head key. Users
    /// without positives keep their format-3 head, which reads as a history without positives. Each user moves in
    /// one batch, so an interrupted upgrade resumes with the users whose positives head is still in place.
    fn merge_list_heads(&self) -> Result<()> {
        let (histories, positives) = (self.cf(cf::USER_HISTORIES)?, self.cf(cf::USER_POSITIVES)?);
        let mut batch = self.batch();
        let mut users = 0;
        // One user at a time (no list of every user in memory), on the walk's snapshot, which the batches
        // committed meanwhile do not disturb.
        self.walk_list_users(cf::USER_POSITIVES, |user, head| {
            let Some(raw) = head else {
                return Ok(true);
            };
            let head_key = codec::list_head_key(user);
            let history = match self
                .db
                .get_cf(histories, &head_key)
                .map_err(|e| Error::rocks("reading a format-3 history head", e))?
            {
                Some(raw) => codec::decode_format3_list_head(&raw)?,
                None => ListHead::default(),
            };
            let heads = UserHeads {
                history,
                positives: codec::decode_format3_list_head(raw)?,
            };
            batch.put_user_heads(user, &heads)?;
            batch.batch.delete_cf(positives, &head_key);
            users += 1;
            if users % 1_000 == 0 {
                std::mem::replace(&mut batch, self.batch()).commit()?;
            }
            Ok(true)
        })?;
        batch.commit()
    }

    /// Format 2 -> 3: a stamp for every item with an embedding (later writes stamp as they go). Idempotent, so
    /// an interrupted upgrade just runs again.
    fn stamp_embedded_items(&self) -> Result<()> {
        let mut batch = self.batch();
        let mut items = 0;
        for entry in self
            .db
            .iterator_cf(self.cf(cf::ITEM_EMBEDDINGS)?, IteratorMode::Start)
        {
            let (key, _) = entry.map_err(|e| Error::rocks("reading item embeddings", e))?;
            batch.stamp_item_key(&key)?;
            items += 1;
            if items % 10_000 == 0 {
                std::mem::replace(&mut batch, self.batch()).commit()?;
            }
        }
        batch.commit()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Internal(format!("column family {name} not open")))
    }

    fn get(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(family)?, key)
            .map_err(|e| Error::rocks(format!("get from {family}"), e))
    }

    /// Starts an atomic batch of state changes and offsets.
    pub fn batch(&self) -> StateBatch<'_> {
        StateBatch {
            store: self,
            batch: WriteBatch::default(),
            events: 0,
            unmarked: Vec::new(),
        }
    }

    /// Next offset to read per (topic, partition), as last committed with state.
    pub fn offsets(&self) -> Result<BTreeMap<(String, i32), i64>> {
        let mut out = BTreeMap::new();
        for entry in self
            .db
            .iterator_cf(self.cf(cf::OFFSETS)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning offsets", e))?;
            out.insert(codec::decode_offset_key(&k)?, codec::decode_offset(&v)?);
        }
        Ok(out)
    }

    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.get(cf::OFFSETS, &codec::offset_key(topic, partition))?
            .map(|v| codec::decode_offset(&v))
            .transpose()
    }

    pub fn item(&self, item_id: &str) -> Result<Option<Item>> {
        self.get(cf::ITEMS, &codec::id_key(item_id))?
            .map(|v| codec::decode_item(&v))
            .transpose()
    }

    /// An item's behaviour counters, summed over its per-partition partials.
    pub fn item_stats(&self, item_id: &str) -> Result<Option<ItemStats>> {
        let prefix = codec::item_stats_prefix(item_id);
        let mut total: Option<ItemStats> = None;
        let iter = self.db.iterator_cf(
            self.cf(cf::ITEM_STATS)?,
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for entry in iter {
            let (k, v) = entry.map_err(|e| Error::rocks("reading item_stats", e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            total
                .get_or_insert_with(ItemStats::default)
                .merge(&codec::decode_stats(&v)?);
        }
        Ok(total)
    }

    /// The partial counters of one item contributed by one source partition.
    pub fn item_stats_partial(
        &self,
        item_id: &str,
        stream: &str,
        partition: i32,
    ) -> Result<Option<ItemStats>> {
        self.get(
            cf::ITEM_STATS,
            &codec::item_stats_key(item_id, stream, partition),
        )?
        .map(|v| codec::decode_stats(&v))
        .transpose()
    }

    /// Whether an (item, user) pair is stored, i.e. the user has an event on the item, by the pair's encoded key
    /// ([`codec::item_user_key`]).
    pub fn item_user_key_exists(&self, key: &[u8]) -> Result<bool> {
        let family = self.cf(cf::ITEM_USERS)?;
        Ok(self
            .db
            .get_pinned_cf(family, key)
            .map_err(|e| Error::rocks("get from item_users", e))?
            .is_some())
    }

    /// A user's newest behaviours (at most `store.history_cap`), oldest first.
    pub fn user_history(&self, user_id: &str) -> Result<Vec<HistoryEntry>> {
        self.user_list_consistent(cf::USER_HISTORIES, user_id)
    }

    /// A user's newest positive interactions (at most `store.positives_cap`), oldest first.
    pub fn user_positives(&self, user_id: &str) -> Result<Vec<HistoryEntry>> {
        self.user_list_consistent(cf::USER_POSITIVES, user_id)
    }

    /// A list is a head and its entries, read separately: on the primary both reads share a snapshot, so a
    /// batch committed in between (the worker's, while a job reads) cannot mix two states. Secondaries change
    /// only on catch-up and read-only stores not at all.
    fn user_list_consistent(&self, family: &str, user_id: &str) -> Result<Vec<HistoryEntry>> {
        if self.access != Access::Primary {
            return self.user_list(family, user_id, ReadOptions::default);
        }
        let snapshot = self.db.snapshot();
        self.user_list(family, user_id, || {
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snapshot);
            opts
        })
    }

    /// The heads of a user's two lists, if the user has any.
    pub fn user_heads(&self, user_id: &str) -> Result<Option<UserHeads>> {
        self.get(cf::USER_HISTORIES, &codec::list_head_key(user_id))?
            .map(|v| codec::decode_user_heads(&v))
            .transpose()
    }

    /// Positions of the `n` oldest entries of a user's list (fewer if it is shorter).
    pub fn list_oldest(
        &self,
        family: &str,
        user_id: &str,
        head: &ListHead,
        n: usize,
    ) -> Result<Vec<ListPosition>> {
        let mut out = Vec::with_capacity(n);
        self.scan_list(family, user_id, head, n, ReadOptions::default(), |k, _| {
            if let (_, Some(at)) = codec::decode_list_key(k)? {
                out.push(at);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads a list with fresh read options from `opts` (a snapshot's, for a [`StoreView`]).
    pub(crate) fn user_list(
        &self,
        family: &str,
        user_id: &str,
        opts: impl Fn() -> ReadOptions,
    ) -> Result<Vec<HistoryEntry>> {
        let heads = self
            .db
            .get_pinned_cf_opt(
                self.cf(cf::USER_HISTORIES)?,
                codec::list_head_key(user_id),
                &opts(),
            )
            .map_err(|e| Error::rocks("get from user_histories", e))?;
        let Some(heads) = heads.map(|v| codec::decode_user_heads(&v)).transpose()? else {
            return Ok(Vec::new());
        };
        let head = if family == cf::USER_POSITIVES {
            heads.positives
        } else {
            heads.history
        };
        let mut out = Vec::with_capacity(head.count as usize);
        self.scan_list(
            family,
            user_id,
            &head,
            head.count as usize,
            opts(),
            |k, v| {
                let (_, at) = codec::decode_list_key(k)?;
                let at = at.ok_or_else(|| Error::StoreCorrupt {
                    context: format!("{family}: a list head among {user_id}'s entries"),
                })?;
                out.push(codec::decode_list_entry(at, v)?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Visits up to `n` entries of a list from its oldest, seeking past the trimmed entries' tombstones.
    fn scan_list(
        &self,
        family: &str,
        user_id: &str,
        head: &ListHead,
        n: usize,
        mut opts: ReadOptions,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        if n == 0 || head.count == 0 {
            return Ok(());
        }
        opts.set_iterate_upper_bound(codec::list_end_key(user_id));
        let from = codec::list_entry_key(user_id, head.oldest);
        let iter = self.db.iterator_cf_opt(
            self.cf(family)?,
            opts,
            IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for entry in iter.take(n) {
            let (k, v) = entry.map_err(|e| Error::rocks(format!("scanning {family}"), e))?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    /// Visits a list newest first while `visit` returns true (the serving path needs only the newest few).
    pub(crate) fn scan_list_newest(
        &self,
        family: &str,
        user_id: &str,
        mut opts: ReadOptions,
        mut visit: impl FnMut(HistoryEntry) -> bool,
    ) -> Result<()> {
        opts.set_iterate_lower_bound(codec::list_head_key(user_id));
        let end = codec::list_end_key(user_id);
        let iter = self.db.iterator_cf_opt(
            self.cf(family)?,
            opts,
            IteratorMode::From(&end, rocksdb::Direction::Reverse),
        );
        for entry in iter {
            // Bounded by the head key below and the end key above: every key is this user's.
            let (k, v) = entry.map_err(|e| Error::rocks(format!("scanning {family}"), e))?;
            match codec::decode_list_key(&k)? {
                (_, Some(at)) => {
                    if !visit(codec::decode_list_entry(at, &v)?) {
                        break;
                    }
                }
                (_, None) => break, // the heads (user_histories only) sort before every entry
            }
        }
        Ok(())
    }

    /// Users with a list in `family` (user_histories or user_positives), in key order: one seek per user.
    pub fn list_users(&self, family: &str, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if limit > 0 {
            self.walk_list_users(family, |user, _| {
                out.push(user.to_string());
                Ok(out.len() < limit)
            })?;
        }
        Ok(out)
    }

    /// Calls `visit(user, head)` for each user with a list in `family`, in key order, while it returns true: one
    /// seek per user, on the iterator's implicit snapshot. `head` is the value of the user's head key, when
    /// the family holds one (it sorts before the user's entries).
    fn walk_list_users(
        &self,
        family: &str,
        mut visit: impl FnMut(&str, Option<&[u8]>) -> Result<bool>,
    ) -> Result<()> {
        let mut iter = self.db.raw_iterator_cf(self.cf(family)?);
        iter.seek([codec::KEY_V2]);
        while iter.valid() {
            let Some(key) = iter.key() else { break };
            let (user, at) = codec::decode_list_key(key)?;
            let head = if at.is_none() { iter.value() } else { None };
            if !visit(user, head)? {
                return Ok(());
            }
            let end = codec::list_end_key(user);
            iter.seek(end);
        }
        iter.status()
            .map_err(|e| Error::rocks(format!("scanning {family}"), e))
    }

    /// (version, ts, vector) of an item's ID embedding in one space.
    pub fn id_embedding(&self, item_id: &str, space: &str) -> Result<Option<(u64, i64, Vec<f32>)>> {
        self.get(cf::ID_EMBEDDINGS, &codec::id_embedding_key(item_id, space))?
            .map(|v| codec::decode_id_embedding(&v))
            .transpose()
    }

    /// Calls `visit(item_id, space, vector)` for every stored ID embedding, in key order, until it returns false.
    pub fn for_each_id_embedding(
        &self,
        mut visit: impl FnMut(&str, &str, Vec<f32>) -> Result<bool>,
    ) -> Result<()> {
        for entry in self
            .db
            .iterator_cf(self.cf(cf::ID_EMBEDDINGS)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning id embeddings", e))?;
            let (item, space) = codec::decode_id_pair_key(&k)?;
            let (_, _, vector) = codec::decode_id_embedding(&v)?;
            if !visit(item, space, vector)? {
                break;
            }
        }
        Ok(())
    }

    /// Every teacher target of one item (`seq2item`, `id:<space>`, ...), by kind.
    pub fn teacher_targets(&self, item_id: &str) -> Result<Vec<TeacherTarget>> {
        self.view().teacher_targets(item_id)
    }

    /// Calls `visit(item_id, target)` for every stored teacher target, in key order, until it returns false.
    pub fn for_each_teacher_target(
        &self,
        mut visit: impl FnMut(&str, TeacherTarget) -> Result<bool>,
    ) -> Result<()> {
        for entry in self
            .db
            .iterator_cf(self.cf(cf::TEACHER_TARGETS)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning teacher targets", e))?;
            let (item, kind) = codec::decode_id_pair_key(&k)?;
            if !visit(item, codec::decode_teacher(kind, &v)?)? {
                break;
            }
        }
        Ok(())
    }

    /// One teacher target of an item.
    pub fn teacher_target(&self, item_id: &str, kind: &str) -> Result<Option<TeacherTarget>> {
        self.get(cf::TEACHER_TARGETS, &codec::teacher_key(item_id, kind))?
            .map(|v| codec::decode_teacher(kind, &v))
            .transpose()
    }

    /// The stored embedding of an item, whatever model version produced it (lookups serve it until replaced).
    pub fn item_embedding(&self, item_id: &str) -> Result<Option<ItemEmbedding>> {
        self.get(cf::ITEM_EMBEDDINGS, &codec::id_key(item_id))?
            .map(|v| codec::decode_item_embedding(item_id, &v))
            .transpose()
    }

    pub fn user_interests(&self, user_id: &str) -> Result<Option<UserInterests>> {
        self.get(cf::USER_INTERESTS, &codec::id_key(user_id))?
            .map(|v| codec::decode_interests(&v))
            .transpose()
    }

    /// The stored semantic-ID codebooks, if a job trained them.
    pub fn codebooks(&self) -> Result<Option<Codebooks>> {
        self.get(cf::SEMANTIC_IDS, codec::CODEBOOKS_KEY)?
            .map(|v| codec::decode_codebooks(&v))
            .transpose()
    }

    /// (model_version, code path) of an item.
    pub fn semantic_ids(&self, item_id: &str) -> Result<Option<(String, Vec<u32>)>> {
        self.get(cf::SEMANTIC_IDS, &codec::id_key(item_id))?
            .map(|v| codec::decode_codes(&v))
            .transpose()
    }

    /// Calls `visit` with every stored item embedding, in item-id order, until it returns false.
    pub fn for_each_item_embedding(
        &self,
        mut visit: impl FnMut(ItemEmbedding) -> Result<bool>,
    ) -> Result<()> {
        for entry in self
            .db
            .iterator_cf(self.cf(cf::ITEM_EMBEDDINGS)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning item embeddings", e))?;
            let id = codec::decode_id_key(&k)?;
            if !visit(codec::decode_item_embedding(id, &v)?)? {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` (item_id, item_version) pairs waiting for the embed stage, in key order.
    pub fn embed_pending(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(cf::EMBED_PENDING)?, IteratorMode::Start)
            .take(limit)
        {
            let (k, _) = entry.map_err(|e| Error::rocks("scanning embed_pending", e))?;
            let (id, version) = codec::decode_embed_pending_key(&k)?;
            out.push((id.to_string(), version));
        }
        Ok(out)
    }

    /// Calls `visit` with every stored item after `after` (all when `None`), in id order, until it returns false.
    pub fn for_each_item_from(
        &self,
        after: Option<&str>,
        mut visit: impl FnMut(Item) -> Result<bool>,
    ) -> Result<()> {
        let start = after.map(codec::id_key);
        let mode = match &start {
            Some(k) => IteratorMode::From(k, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        for entry in self.db.iterator_cf(self.cf(cf::ITEMS)?, mode) {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning items", e))?;
            if start.as_deref() == Some(&k[..]) {
                continue;
            }
            if !visit(codec::decode_item(&v)?)? {
                break;
            }
        }
        Ok(())
    }

    /// Ids in a family keyed by one id (items, item_embeddings, user_interests, ...), in key order. User lists
    /// have their own key layout: see [`Store::list_users`].
    pub fn ids(&self, family: &str, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(family)?, IteratorMode::Start)
            .take(limit)
        {
            let (k, _) = entry.map_err(|e| Error::rocks(format!("scanning {family}"), e))?;
            out.push(codec::decode_id_key(&k)?.to_string());
        }
        Ok(out)
    }

    /// A named counter in `job_state` (e.g. the offline log's next sequence number).
    pub fn job_u64(&self, name: &str) -> Result<Option<u64>> {
        self.get(cf::JOB_STATE, name.as_bytes())?
            .map(|v| codec::decode_u64(&v))
            .transpose()
    }

    /// The rows waiting for the next offline-log segment, oldest first, handed to `f` `chunk` rows at a time (so
    /// that a roll of many rows never holds them all), every chunk read as of the same moment (one iterator, one
    /// implicit snapshot). Returns the last row's sequence number, or None when nothing was pending.
    pub fn log_pending_chunks(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[(u64, LogRow)]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let mut rows = Vec::with_capacity(chunk.max(1));
        let mut last = None;
        for entry in self
            .db
            .iterator_cf(self.cf(cf::LOG_PENDING)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning log_pending", e))?;
            let seq = codec::decode_seq_key(&k)?;
            rows.push((seq, codec::decode_log_row(&v)?));
            last = Some(seq);
            if rows.len() >= chunk.max(1) {
                f(&rows)?;
                rows.clear();
            }
        }
        if !rows.is_empty() {
            f(&rows)?;
        }
        Ok(last)
    }

    /// After a segment is durably written: drops its pending rows (sequence numbers up to `last_seq`) and
    /// records the next segment number, atomically.
    pub fn finish_log_segment(
        &self,
        last_seq: u64,
        next_segment: u64,
        job_key: &str,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(cf::LOG_PENDING)?,
            codec::seq_key(0),
            codec::seq_key(last_seq + 1),
        );
        batch.put_cf(
            self.cf(cf::JOB_STATE)?,
            job_key.as_bytes(),
            codec::encode_u64(next_segment),
        );
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| Error::rocks("finishing log segment", e))
    }

    /// Up to `limit` items' behaviour counters (partials summed), in key order.
    pub fn all_item_stats(&self, limit: usize) -> Result<Vec<(String, ItemStats)>> {
        let mut out: Vec<(String, ItemStats)> = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(cf::ITEM_STATS)?, IteratorMode::Start)
        {
            let (k, v) = entry.map_err(|e| Error::rocks("scanning item_stats", e))?;
            let id = codec::decode_item_stats_key(&k)?;
            let partial = codec::decode_stats(&v)?;
            match out.last_mut() {
                Some((last, total)) if last == id => total.merge(&partial),
                _ => {
                    if out.len() == limit {
                        break;
                    }
                    out.push((id.to_string(), partial));
                }
            }
        }
        Ok(out)
    }

    /// Exact number of keys per column family (a full scan: for reports and tests, not hot paths).
    pub fn key_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        cf::ALL
            .iter()
            .map(|&name| Ok((name, self.key_count(name)?)))
            .collect()
    }

    /// Exact number of keys in one column family (a full scan of that family only).
    pub fn key_count(&self, family: &str) -> Result<u64> {
        let mut n = 0u64;
        for entry in self.db.iterator_cf(self.cf(family)?, IteratorMode::Start) {
            entry.map_err(|e| Error::rocks(format!("counting {family}"), e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Waits until every memtable is flushed and no compaction is pending or running: the store as a long
    /// pause would leave it. The ingest benchmark uses it to count the background work a replay leaves behind.
    pub fn wait_for_compactions(&self) -> Result<()> {
        let mut opts = rocksdb::WaitForCompactOptions::default();
        opts.set_flush(true);
        self.db
            .wait_for_compact(&opts)
            .map_err(|e| Error::rocks("waiting for compactions", e))
    }

    /// Writes every memtable to table files (the WAL already makes writes durable; this makes them compact and
    /// indexed, as a long-running worker's store is most of the time).
    pub fn flush(&self) -> Result<()> {
        for name in cf::ALL {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(|e| Error::rocks(format!("flushing {name}"), e))?;
        }
        Ok(())
    }

    /// A consistent, openable copy of the store at `dest` (hard links where possible), for backups and replicas.
    pub fn checkpoint(&self, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref();
        if dest.exists() {
            return Err(Error::invalid(
                "checkpoint destination",
                format!("{} already exists; choose a new path", dest.display()),
            ));
        }
        self.db
            .flush_wal(true)
            .map_err(|e| Error::rocks("flushing WAL before checkpoint", e))?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| Error::rocks("preparing checkpoint", e))?;
        cp.create_checkpoint(dest)
            .map_err(|e| Error::rocks(format!("checkpoint to {}", dest.display()), e))
    }

    /// Writes a user's lists the way store formats 2 and 3 did (each list's head in its own family, entries as
    /// value v1), for tests of the in-place upgrade.
    #[doc(hidden)]
    pub fn write_format3_lists(
        &self,
        user_id: &str,
        history: &[HistoryEntry],
        positives: &[HistoryEntry],
    ) -> Result<()> {
        let mut batch = self.batch();
        let v1 = codec::encode_format3_list_entry;
        batch.put_format3_list(cf::USER_HISTORIES, user_id, history, v1)?;
        batch.put_format3_list(cf::USER_POSITIVES, user_id, positives, v1)?;
        batch.commit()
    }

    /// Writes a user list the way store format 1 did (one value per user), for tests of the in-place upgrade.
    #[doc(hidden)]
    pub fn write_format1_list(
        &self,
        family: &str,
        user_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<()> {
        self.db
            .put_cf(
                self.cf(family)?,
                codec::id_key(user_id),
                codec::encode_history(entries),
            )
            .map_err(|e| Error::rocks("writing a format-1 list", e))
    }

    /// Drops a column family, for tests that simulate a store written before the family existed.
    #[doc(hidden)]
    pub fn drop_family(&mut self, name: &str) -> Result<()> {
        self.db
            .drop_cf(name)
            .map_err(|e| Error::rocks(format!("dropping {name}"), e))
    }

    /// Marks the store with a format version (tests of the upgrade path use this to simulate a newer build).
    #[doc(hidden)]
    pub fn force_format_version(&self, version: u32) -> Result<()> {
        self.db
            .put_cf(self.cf(cf::META)?, FORMAT_KEY, version.to_be_bytes())
            .map_err(|e| Error::rocks("writing format version", e))
    }
}

/// Names, sizes and modification times of a store directory's files, hashed. Every write of the primary
/// appends to its WAL, so any write changes it.
fn files_fingerprint(path: &Path) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let listing =
        || -> std::io::Result<Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)>> {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                files.push((entry.file_name(), meta.len(), meta.modified().ok()));
            }
            files.sort();
            Ok(files)
        };
    let files = listing()
        .map_err(|e| Error::io(format!("listing store directory {}", path.display()), e))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    Ok(hasher.finish())
}

/// A random 64-bit number (std's hasher keys come from the OS's random source).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Readers open only what a writer created: RocksDB's own error for a missing store is far less clear.
fn require_existing(path: &Path, hint: &str) -> Result<()> {
    if path.join("CURRENT").exists() {
        return Ok(());
    }
    Err(Error::invalid(
        "store path",
        format!(
            "{} is not a sailstream store (no CURRENT file){hint}",
            path.display()
        ),
    ))
}

fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let text = e.to_string();
    if text.contains("LOCK")
        || text.contains("lock hold")
        || text.contains("Resource temporarily unavailable")
    {
        Error::StoreLocked {
            path: path.to_path_buf(),
        }
    } else {
        Error::rocks(format!("opening store at {}", path.display()), e)
    }
}

/// An atomic group of state changes plus the source offsets they consumed.
pub struct StateBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
    events: usize,
    /// Users whose interests marks this batch deletes, recorded in the store's [`UnmarkLog`] at commit.
    unmarked: Vec<String>,
}

impl StateBatch<'_> {
    fn put(&mut self, family: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let handle = self.store.cf(family)?;
        self.batch.put_cf(handle, key, value);
        Ok(())
    }

    pub fn put_item(&mut self, item: &Item) -> Result<()> {
        self.put(
            cf::ITEMS,
            &codec::id_key(&item.item_id),
            &codec::encode_item(item)?,
        )
    }

    /// Writes the partial counters of `item_id` contributed by (stream, partition).
    pub fn put_item_stats(
        &mut self,
        item_id: &str,
        stream: &str,
        partition: i32,
        stats: &ItemStats,
    ) -> Result<()> {
        self.put(
            cf::ITEM_STATS,
            &codec::item_stats_key(item_id, stream, partition),
            &codec::encode_stats(stats),
        )
    }

    /// Records an (item, user) pair by its encoded key ([`codec::item_user_key`]).
    pub fn put_item_user(&mut self, key: &[u8]) -> Result<()> {
        self.put(cf::ITEM_USERS, key, &[codec::VALUE_V1])
    }

    /// Replaces a user's two lists with `history` and `positives` (each oldest first; positives are normally
    /// also in the history). Ingest appends entry by entry instead.
    pub fn put_user_lists(
        &mut self,
        user_id: &str,
        history: &[HistoryEntry],
        positives: &[HistoryEntry],
    ) -> Result<()> {
        let heads = UserHeads {
            history: self.replace_list_entries(
                cf::USER_HISTORIES,
                user_id,
                history,
                codec::encode_list_entry,
            )?,
            positives: self.replace_list_entries(
                cf::USER_POSITIVES,
                user_id,
                positives,
                codec::encode_list_entry,
            )?,
        };
        if heads != UserHeads::default() {
            self.put_user_heads(user_id, &heads)?;
        }
        Ok(())
    }

    /// Deletes every key of a user's list in `family` (its format-3 head too) and writes `entries` in their
    /// place, each value made by `encode`, returning their head.
    fn replace_list_entries(
        &mut self,
        family: &str,
        user_id: &str,
        entries: &[HistoryEntry],
        encode: fn(&HistoryEntry) -> Vec<u8>,
    ) -> Result<ListHead> {
        let handle = self.store.cf(family)?;
        self.batch.delete_range_cf(
            handle,
            codec::list_head_key(user_id),
            codec::list_end_key(user_id),
        );
        let mut head = ListHead::default();
        for e in entries {
            let at = (e.ts, head.next_seq);
            if head.count == 0 || at < head.oldest {
                head.oldest = at;
            }
            self.put(family, &codec::list_entry_key(user_id, at), &encode(e))?;
            head.count += 1;
            head.next_seq += 1;
        }
        Ok(head)
    }

    /// A list with its head in its own family, as store formats 2 and 3 kept it, for the format-1 upgrade
    /// (which hands over to the format-4 one) and tests; `encode` makes the entries' values.
    fn put_format3_list(
        &mut self,
        family: &str,
        user_id: &str,
        entries: &[HistoryEntry],
        encode: fn(&HistoryEntry) -> Vec<u8>,
    ) -> Result<()> {
        let head = self.replace_list_entries(family, user_id, entries, encode)?;
        if head.count > 0 {
            self.put(
                family,
                &codec::list_head_key(user_id),
                &codec::encode_format3_list_head(&head),
            )?;
        }
        Ok(())
    }

    pub fn put_user_heads(&mut self, user_id: &str, heads: &UserHeads) -> Result<()> {
        self.put(
            cf::USER_HISTORIES,
            &codec::list_head_key(user_id),
            &codec::encode_user_heads(heads),
        )
    }

    pub fn put_list_entry(
        &mut self,
        family: &str,
        user_id: &str,
        at: ListPosition,
        entry: &HistoryEntry,
    ) -> Result<()> {
        self.put(
            family,
            &codec::list_entry_key(user_id, at),
            &codec::encode_list_entry(entry),
        )
    }

    pub fn delete_list_entry(
        &mut self,
        family: &str,
        user_id: &str,
        at: ListPosition,
    ) -> Result<()> {
        let handle = self.store.cf(family)?;
        self.batch
            .delete_cf(handle, codec::list_entry_key(user_id, at));
        Ok(())
    }

    pub fn put_id_embedding(&mut self, e: &IdEmbedding) -> Result<()> {
        self.put(
            cf::ID_EMBEDDINGS,
            &codec::id_embedding_key(&e.item_id, &e.space),
            &codec::encode_id_embedding(e),
        )
    }

    /// Marks an item version as waiting for the embed stage (written with the item itself).
    pub fn put_embed_pending(&mut self, item_id: &str, item_version: u64) -> Result<()> {
        self.put(
            cf::EMBED_PENDING,
            &codec::embed_pending_key(item_id, item_version),
            &[codec::VALUE_V1],
        )
    }

    /// Clears exactly one pending (item, version): a newer version queued meanwhile keeps its own entry.
    pub fn delete_embed_pending(&mut self, item_id: &str, item_version: u64) -> Result<()> {
        let handle = self.store.cf(cf::EMBED_PENDING)?;
        self.batch
            .delete_cf(handle, codec::embed_pending_key(item_id, item_version));
        Ok(())
    }

    /// Marks a user whose positives changed, for the stream's interest update.
    pub fn put_interests_pending(&mut self, user_id: &str) -> Result<()> {
        self.put(
            cf::INTERESTS_PENDING,
            &codec::id_key(user_id),
            &[codec::VALUE_V1],
        )
    }

    pub fn delete_interests_pending(&mut self, user_id: &str) -> Result<()> {
        let handle = self.store.cf(cf::INTERESTS_PENDING)?;
        self.batch.delete_cf(handle, codec::id_key(user_id));
        self.unmarked.push(user_id.to_string());
        Ok(())
    }

    pub fn delete_teacher_target(&mut self, item_id: &str, kind: &str) -> Result<()> {
        let handle = self.store.cf(cf::TEACHER_TARGETS)?;
        self.batch
            .delete_cf(handle, codec::teacher_key(item_id, kind));
        self.stamp_item_key(&codec::id_key(item_id))
    }

    /// A new stamp for the item (its `id_key`): every item-level write calls this, so a reader's decoded copy
    /// of the item is current exactly while the stamp it was read with is.
    fn stamp_item_key(&mut self, id_key: &[u8]) -> Result<()> {
        let stamp = self.store.next_stamp.fetch_add(1, Ordering::Relaxed);
        self.put(cf::ITEM_STAMPS, id_key, &codec::encode_u64(stamp))
    }

    pub fn put_teacher_target(&mut self, item_id: &str, t: &TeacherTarget) -> Result<()> {
        self.stamp_item_key(&codec::id_key(item_id))?;
        self.put(
            cf::TEACHER_TARGETS,
            &codec::teacher_key(item_id, &t.kind),
            &codec::encode_teacher(t),
        )
    }

    pub fn put_user_interests(&mut self, user_id: &str, u: &UserInterests) -> Result<()> {
        self.put(
            cf::USER_INTERESTS,
            &codec::id_key(user_id),
            &codec::encode_interests(u),
        )
    }

    pub fn put_model_info(&mut self, info: &ModelInfo) -> Result<()> {
        self.put(
            cf::META,
            &codec::model_info_key(&info.name, &info.version),
            &codec::encode_model_info(info),
        )
    }

    pub fn put_codebooks(&mut self, c: &Codebooks) -> Result<()> {
        self.put(
            cf::SEMANTIC_IDS,
            codec::CODEBOOKS_KEY,
            &codec::encode_codebooks(c),
        )
    }

    pub fn put_semantic_ids(
        &mut self,
        item_id: &str,
        model_version: &str,
        codes: &[u32],
    ) -> Result<()> {
        let key = codec::id_key(item_id);
        self.stamp_item_key(&key)?;
        self.put(
            cf::SEMANTIC_IDS,
            &key,
            &codec::encode_codes(model_version, codes),
        )
    }

    pub fn put_item_embedding(&mut self, e: &ItemEmbedding) -> Result<()> {
        let key = codec::id_key(&e.item_id);
        self.stamp_item_key(&key)?;
        self.put(cf::ITEM_EMBEDDINGS, &key, &codec::encode_item_embedding(e))
    }

    /// Queues one event for the offline log under sequence number `seq`.
    pub fn append_log(&mut self, seq: u64, row: &LogRow) -> Result<()> {
        self.put(
            cf::LOG_PENDING,
            &codec::seq_key(seq),
            &codec::encode_log_row(row),
        )
    }

    pub fn set_job_u64(&mut self, name: &str, value: u64) -> Result<()> {
        self.put(cf::JOB_STATE, name.as_bytes(), &codec::encode_u64(value))
    }

    /// Records that everything before `next_offset` on (topic, partition) is reflected in this batch's state.
    pub fn set_offset(&mut self, topic: &str, partition: i32, next_offset: i64) -> Result<()> {
        self.put(
            cf::OFFSETS,
            &codec::offset_key(topic, partition),
            &codec::encode_offset(next_offset),
        )
    }

    /// Counts events folded into this batch (for metrics and logs).
    pub fn add_events(&mut self, n: usize) {
        self.events += n;
    }

    pub fn events(&self) -> usize {
        self.events
    }

    /// Writes everything at once, durably (WAL synced), or nothing.
    pub fn commit(self) -> Result<()> {
        if self.store.access != Access::Primary {
            return Err(Error::invalid("store", "opened read-only"));
        }
        if !self.unmarked.is_empty() {
            // Recorded before the write: should the write fail, ingest only rewrites marks that are still there,
            // where recording after it would leave a window in which ingest trusts a mark already deleted.
            let mut log = self.store.unmark_log();
            log.generation += 1;
            let generation = log.generation;
            log.recent
                .extend(self.unmarked.into_iter().map(|user| (generation, user)));
            if log.recent.len() > UnmarkLog::KEPT {
                // A generation is kept whole or not at all: a partial one would name too few users.
                let cut = log.recent[log.recent.len() - UnmarkLog::KEPT - 1].0;
                while log.recent.front().is_some_and(|(g, _)| *g <= cut) {
                    log.recent.pop_front();
                }
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.store
            .db
            .write_opt(self.batch, &opts)
            .map_err(|e| Error::rocks("committing state batch", e))
    }
}
