//! State of the query manager: which fragment runs where, and the dynamic
//! filter parts received for the queries with fragments here. Generic over
//! the handle of a fragment, so that it is tested without actors.

use std::collections::{HashMap, HashSet};

use quarry_exec::distributed::filters::FilterPart;
use quarry_exec::distributed::{FragmentKey, QueryId};

/// A filter part as received: (filter id, building task, part).
pub type ReceivedPart = (u64, FragmentKey, FilterPart);

/// The fragments of this node and the filter parts for them.
#[derive(Debug)]
pub struct Registry<F> {
    fragments: HashMap<FragmentKey, F>,
    /// Parts received, by query: kept for the fragments of the query that
    /// start after them, until a start finds the query with no fragment
    /// left here.
    parts: HashMap<QueryId, Vec<ReceivedPart>>,
    /// Fragments alive: registered, or stopped and not yet ended.
    live: usize,
}

impl<F> Default for Registry<F> {
    fn default() -> Self {
        Registry {
            fragments: HashMap::new(),
            parts: HashMap::new(),
            live: 0,
        }
    }
}

impl<F: Clone> Registry<F> {
    /// Registers `fragment`, just spawned for `key`. Returns the parts its
    /// query received so far (to give it), and the fragment it replaces if
    /// `key` was started before (to stop).
    pub fn started(&mut self, key: FragmentKey, fragment: F) -> (Vec<ReceivedPart>, Option<F>) {
        let running: HashSet<QueryId> = self.fragments.keys().map(|k| k.query).collect();
        self.parts
            .retain(|query, _| *query == key.query || running.contains(query));
        self.live += 1;
        let replaced = self.fragments.insert(key, fragment);
        let parts = self.parts.get(&key.query).cloned().unwrap_or_default();
        (parts, replaced)
    }

    /// Keeps a part of filter `filter` built by task `from`; returns the
    /// fragments of its query here (to give it).
    pub fn received(&mut self, filter: u64, from: FragmentKey, part: FilterPart) -> Vec<F> {
        self.parts
            .entry(from.query)
            .or_default()
            .push((filter, from, part));
        self.of_query(from.query)
    }

    /// The fragment `key`, if it runs here.
    pub fn get(&self, key: &FragmentKey) -> Option<&F> {
        self.fragments.get(key)
    }

    /// The fragments of `query` here, in key order.
    pub fn of_query(&self, query: QueryId) -> Vec<F> {
        let mut fragments: Vec<_> = self
            .fragments
            .iter()
            .filter(|(key, _)| key.query == query)
            .collect();
        fragments.sort_by_key(|(key, _)| **key);
        fragments
            .into_iter()
            .map(|(_, fragment)| fragment.clone())
            .collect()
    }

    /// Forgets `query`: its fragments (returned, to stop) and its parts.
    pub fn stop(&mut self, query: QueryId) -> Vec<F> {
        self.parts.remove(&query);
        let keys: Vec<FragmentKey> = self
            .fragments
            .keys()
            .filter(|key| key.query == query)
            .copied()
            .collect();
        keys.iter()
            .filter_map(|key| self.fragments.remove(key))
            .collect()
    }

    /// A fragment ended (`is` tells it by its handle): forgotten if still
    /// registered, and no longer alive.
    pub fn ended(&mut self, is: impl Fn(&F) -> bool) {
        self.fragments.retain(|_, fragment| !is(fragment));
        self.live = self.live.saturating_sub(1);
    }

    /// Fragments alive.
    pub fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(query: QueryId, stage: u32, task: u32) -> FragmentKey {
        FragmentKey { query, stage, task }
    }

    fn part(tag: &'static str) -> FilterPart {
        FilterPart {
            schema: Bytes::from_static(tag.as_bytes()),
            expr: Bytes::new(),
            keys: Vec::new(),
        }
    }

    #[test]
    fn a_fragment_started_after_its_filter_parts_came_is_given_them() {
        let mut registry = Registry::default();
        assert!(registry.received(3, key(1, 2, 0), part("early")).is_empty());
        let (parts, replaced) = registry.started(key(1, 1, 0), "scan");
        assert_eq!(parts, vec![(3, key(1, 2, 0), part("early"))]);
        assert_eq!(replaced, None);
        // Later parts go to the query's fragments here, and only those.
        registry.started(key(2, 1, 0), "other query");
        assert_eq!(
            registry.received(3, key(1, 2, 1), part("late")),
            vec!["scan"]
        );
        let (parts, _) = registry.started(key(1, 3, 0), "another scan");
        assert_eq!(parts.len(), 2, "both parts so far");
    }

    #[test]
    fn stopping_a_query_forgets_its_fragments_and_parts_but_not_others() {
        let mut registry = Registry::default();
        registry.started(key(1, 1, 0), "a");
        registry.started(key(1, 2, 0), "b");
        registry.started(key(2, 1, 0), "c");
        registry.received(3, key(1, 2, 0), part("p"));
        let mut stopped = registry.stop(1);
        stopped.sort();
        assert_eq!(stopped, vec!["a", "b"]);
        assert_eq!(registry.get(&key(1, 1, 0)), None);
        assert_eq!(registry.get(&key(2, 1, 0)), Some(&"c"));
        assert_eq!(registry.live(), 3, "alive until they end");
        registry.ended(|f| *f == "a");
        registry.ended(|f| *f == "b");
        assert_eq!(registry.live(), 1);
        let (parts, _) = registry.started(key(1, 4, 0), "late start");
        assert!(parts.is_empty(), "a stopped query's parts are gone");
    }

    #[test]
    fn parts_of_a_query_with_no_fragment_left_are_dropped_at_the_next_start() {
        let mut registry = Registry::default();
        registry.started(key(1, 1, 0), "a");
        registry.received(3, key(1, 2, 0), part("p"));
        registry.ended(|f| *f == "a");
        registry.started(key(2, 1, 0), "b");
        let (parts, _) = registry.started(key(1, 1, 1), "a again");
        assert!(parts.is_empty());
        assert_eq!(registry.of_query(2), vec!["b"]);
    }

    #[test]
    fn a_fragment_started_twice_replaces_the_first() {
        let mut registry = Registry::default();
        registry.started(key(1, 1, 0), "first");
        let (_, replaced) = registry.started(key(1, 1, 0), "second");
        assert_eq!(replaced, Some("first"));
        assert_eq!(registry.get(&key(1, 1, 0)), Some(&"second"));
    }
}
