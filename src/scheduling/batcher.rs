//! Provisioning batch windows (Karpenter's): the first pod opens a window; the window closes
//! when no new pod has arrived for `idle`, or `max` after it opened, whichever comes first. The
//! same pod reported again (by the extender and by the watch, or by repeated watch events) is
//! merged and does not hold the window open. Pure: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Batcher<T> {
    idle: Duration,
    max: Duration,
    opened: Option<Instant>,
    last_new: Option<Instant>,
    /// key → (arrival order, item).
    items: HashMap<String, (u64, T)>,
    seq: u64,
}

impl<T> Batcher<T> {
    pub fn new(idle: Duration, max: Duration) -> Self {
        Self {
            idle,
            max: max.max(idle),
            opened: None,
            last_new: None,
            items: HashMap::new(),
            seq: 0,
        }
    }

    /// Change the windows (config reload); an open window keeps its start.
    pub fn set_windows(&mut self, idle: Duration, max: Duration) {
        self.idle = idle;
        self.max = max.max(idle);
    }

    /// Add or refresh an item. Returns true if the key is new to this batch.
    pub fn add(&mut self, key: String, item: T, now: Instant) -> bool {
        match self.items.get_mut(&key) {
            Some(slot) => {
                slot.1 = item;
                false
            }
            None => {
                self.seq += 1;
                self.items.insert(key, (self.seq, item));
                self.opened.get_or_insert(now);
                self.last_new = Some(now);
                true
            }
        }
    }

    /// Forget an item (its pod was bound or deleted). Closes the window if it empties.
    pub fn remove(&mut self, key: &str) -> Option<T> {
        let item = self.items.remove(key).map(|(_, t)| t);
        if self.items.is_empty() {
            self.opened = None;
            self.last_new = None;
        }
        item
    }

    pub fn contains(&self, key: &str) -> bool {
        self.items.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the open window closes; `None` when no window is open.
    pub fn deadline(&self) -> Option<Instant> {
        let opened = self.opened?;
        let last = self.last_new.unwrap_or(opened);
        Some((last + self.idle).min(opened + self.max))
    }

    pub fn ready(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }

    /// How long the window has been open.
    pub fn open_for(&self, now: Instant) -> Duration {
        self.opened.map(|o| now - o).unwrap_or_default()
    }

    /// Close the window: the items in arrival order.
    pub fn take(&mut self) -> Vec<(String, T)> {
        let mut items: Vec<(String, (u64, T))> = self.items.drain().collect();
        items.sort_by_key(|(_, (seq, _))| *seq);
        self.opened = None;
        self.last_new = None;
        items.into_iter().map(|(k, (_, t))| (k, t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn closes_after_idle() {
        let t0 = Instant::now();
        let mut b = Batcher::new(ms(1000), ms(10_000));
        assert!(b.deadline().is_none());
        assert!(b.add("a".into(), 1, t0));
        assert_eq!(b.deadline(), Some(t0 + ms(1000)));
        assert!(b.add("b".into(), 2, t0 + ms(600)));
        assert!(!b.ready(t0 + ms(1500)));
        assert!(b.ready(t0 + ms(1600)));
        let items = b.take();
        assert_eq!(items, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
        assert!(b.deadline().is_none());
    }

    #[test]
    fn closes_at_max_under_a_steady_stream() {
        let t0 = Instant::now();
        let mut b = Batcher::new(ms(1000), ms(10_000));
        for i in 0..100u64 {
            b.add(format!("p{i}"), i, t0 + ms(i * 500));
        }
        assert_eq!(b.deadline(), Some(t0 + ms(10_000)));
        assert!(b.ready(t0 + ms(10_000)));
    }

    #[test]
    fn duplicates_merge_and_do_not_extend_the_window() {
        let t0 = Instant::now();
        let mut b = Batcher::new(ms(1000), ms(10_000));
        assert!(b.add("a".into(), 1, t0));
        assert!(!b.add("a".into(), 2, t0 + ms(900)));
        assert_eq!(b.len(), 1);
        assert_eq!(b.deadline(), Some(t0 + ms(1000)));
        assert_eq!(b.take(), vec![("a".to_owned(), 2)]);
    }

    #[test]
    fn removing_the_last_item_closes_the_window() {
        let t0 = Instant::now();
        let mut b = Batcher::new(ms(1000), ms(10_000));
        b.add("a".into(), 1, t0);
        assert_eq!(b.remove("a"), Some(1));
        assert!(b.deadline().is_none());
        assert!(b.is_empty());
    }
}
