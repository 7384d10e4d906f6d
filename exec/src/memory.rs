//! A statement's memory pool: DataFusion's fair spill pool, with a bound on
//! what the merge phases of external sorts may take.
//!
//! After a sort has spilled, DataFusion 55 merges its sorted runs through an
//! unspillable reservation (`ExternalSorterMerge[partition]`) that it grows
//! for as many runs as the pool allows (`multi_level_merge.rs`: "there should
//! be some upper limit to memory reservation so we won't starve the
//! system"). With several partitions sorting at once, the first merges take
//! the whole pool, and the `SortPreservingMergeExec` above them, or a sort
//! still buffering its input, then fails with 53200 although everything
//! could have completed by merging fewer runs per pass. Here the merges
//! together hold at most half of the pool, shared evenly; a merge refused more
//! merges fewer runs at a time (DataFusion retries with fewer runs, down to
//! two, and re-spills a run in smaller batches when even two do not fit).

use std::collections::HashMap;
use std::fmt;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use std::sync::{Arc, Mutex, Weak};

/// The consumer name DataFusion gives a sort's merge reservation
/// (`sorts/sort.rs`).
const SORT_MERGE: &str = "ExternalSorterMerge[";

/// A fair spill pool of a fixed size whose sort merges share at most half of
/// it.
#[derive(Debug)]
pub struct QueryPool {
    inner: FairSpillPool,
    size: usize,
    merges: Mutex<Merges>,
}

#[derive(Debug, Default)]
struct Merges {
    /// Sort merge consumers registered (one per sorting partition).
    registered: usize,
    /// Bytes each merge consumer holds, by consumer id.
    held: HashMap<usize, usize>,
}

impl QueryPool {
    /// A pool of `size` bytes.
    pub fn new(size: usize) -> QueryPool {
        QueryPool {
            inner: FairSpillPool::new(size),
            size,
            merges: Mutex::new(Merges::default()),
        }
    }

    fn merges(&self) -> std::sync::MutexGuard<'_, Merges> {
        self.merges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most one sort merge may hold while `registered` sorts are running.
    fn merge_share(&self, registered: usize) -> usize {
        self.size / 2 / registered.max(1)
    }
}

fn is_merge(consumer: &MemoryConsumer) -> bool {
    consumer.name().starts_with(SORT_MERGE)
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sort merges at most half)", self.inner)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if is_merge(consumer) {
            self.merges().registered += 1;
        }
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if is_merge(consumer) {
            let mut merges = self.merges();
            merges.registered = merges.registered.saturating_sub(1);
            merges.held.remove(&consumer.id());
        }
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        if is_merge(reservation.consumer()) {
            *self
                .merges()
                .held
                .entry(reservation.consumer().id())
                .or_default() += additional;
        }
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        if is_merge(reservation.consumer())
            && let Some(held) = self.merges().held.get_mut(&reservation.consumer().id())
        {
            *held = held.saturating_sub(shrink);
        }
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if !is_merge(reservation.consumer()) {
            return self.inner.try_grow(reservation, additional);
        }
        let mut merges = self.merges();
        let share = self.merge_share(merges.registered);
        let id = reservation.consumer().id();
        let held = merges.held.get(&id).copied().unwrap_or(0);
        if held + additional > share {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "Failed to allocate additional {additional} bytes for {} with {held} bytes \
                 already allocated: a sort merge may hold at most {share} bytes of this \
                 {} byte pool",
                reservation.consumer().name(),
                self.size
            )));
        }
        self.inner.try_grow(reservation, additional)?;
        *merges.held.entry(id).or_default() += additional;
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// The memory pool of each distributed query with fragments on this node:
/// its fragments, and on the coordinator the client's session, take their
/// memory from one pool of the query's limit, as one statement on one node
/// does (a pool per fragment would let a query of many stages hold the
/// limit many times over). A pool lives as long as something uses it.
#[derive(Debug, Default)]
pub struct QueryMemory(Mutex<HashMap<crate::distributed::QueryId, Weak<dyn MemoryPool>>>);

impl QueryMemory {
    /// `query`'s pool: the one in use, else a new one from `make`.
    pub fn pool(
        &self,
        query: crate::distributed::QueryId,
        make: impl FnOnce() -> Arc<dyn MemoryPool>,
    ) -> Arc<dyn MemoryPool> {
        let mut pools = self.0.lock().expect("query memory lock");
        if let Some(pool) = pools.get(&query).and_then(Weak::upgrade) {
            return pool;
        }
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = make();
        pools.insert(query, Arc::downgrade(&pool));
        pool
    }

    /// Queries with a pool in use.
    #[cfg(test)]
    fn len(&self) -> usize {
        let pools = self.0.lock().expect("query memory lock");
        pools
            .values()
            .filter(|pool| pool.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn sort_merges_share_half_the_pool_and_leave_the_rest_to_others() {
        let pool: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(1000));
        let a = MemoryConsumer::new("ExternalSorterMerge[0]").register(&pool);
        let b = MemoryConsumer::new("ExternalSorterMerge[1]").register(&pool);
        // Two merges: 250 bytes each.
        a.try_grow(200).expect("within the share");
        assert!(a.try_grow(100).is_err(), "past a merge's share");
        // A second reservation of the same consumer counts against it.
        let a2 = a.new_empty();
        assert!(
            a2.try_grow(100).is_err(),
            "split reservations share one bound"
        );
        b.try_grow(250).expect("the other merge's share");
        // An unspillable consumer still finds the other half.
        let merge_output = MemoryConsumer::new("SortPreservingMergeExec[0]").register(&pool);
        merge_output
            .try_grow(500)
            .expect("the half merges cannot take");
        assert_eq!(pool.reserved(), 950);
        // Freed memory can be taken again; a merge that ends frees its share.
        a.free();
        a.try_grow(250).expect("after freeing");
        drop(b);
        drop(a);
        drop(a2);
        let c = MemoryConsumer::new("ExternalSorterMerge[2]").register(&pool);
        assert!(c.try_grow(500).is_ok(), "one merge may take half");
        assert!(c.try_grow(1).is_err());
    }

    fn new_pool() -> Arc<dyn MemoryPool> {
        Arc::new(GreedyMemoryPool::new(1 << 20))
    }

    #[test]
    fn the_fragments_of_one_query_share_its_pool_while_it_is_used() {
        let memory = QueryMemory::default();
        let coordinator = memory.pool(1, new_pool);
        let fragment = memory.pool(1, || panic!("the query has a pool"));
        assert!(Arc::ptr_eq(&coordinator, &fragment));
        let other = memory.pool(2, new_pool);
        assert!(!Arc::ptr_eq(&coordinator, &other));
        assert_eq!(memory.len(), 2);
        // Memory taken through one is taken from the other.
        let reservation =
            datafusion::execution::memory_pool::MemoryConsumer::new("join").register(&fragment);
        reservation.try_grow(600 << 10).expect("fits");
        assert_eq!(coordinator.reserved(), 600 << 10);
        drop(reservation);
        // A query nothing uses any more gets a new pool.
        drop((coordinator, fragment));
        assert_eq!(memory.len(), 1);
        let again = memory.pool(1, new_pool);
        assert_eq!(again.reserved(), 0);
        assert_eq!(memory.len(), 2);
    }
}
