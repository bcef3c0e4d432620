//! The verified-token cache, one per worker: a token seen again skips signature
//! verification until its `exp`. Entries belong to one key-set generation; a new JWKS
//! empties the cache. Bounded: when full, expired entries go first, then an arbitrary
//! eighth of the rest. Emptying it all instead would make a set of tokens a little
//! larger than the cache, seen in turn, miss on every request.

use std::collections::HashMap;
use std::rc::Rc;

use super::Authorized;

/// What is remembered of a verified token.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// The identity, or `None` when the token failed the claim policy.
    pub user: Option<Rc<Authorized>>,
    /// `exp`, seconds since the Unix epoch.
    pub expires: u64,
    /// `nbf`, when present.
    pub not_before: Option<u64>,
    /// `cnf.x5t#S256`: the certificate thumbprint the token is bound to, if any.
    pub bound_to: Option<String>,
    /// Which path rules' claims it meets, a bit per rule.
    pub rules_met: u64,
}

/// A worker's cache of verified tokens.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<Box<str>, CachedToken>,
    capacity: usize,
    generation: u64,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens; `0` caches nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            generation: 0,
        }
    }

    /// The entry for `token` under key-set `generation`.
    pub fn get(&mut self, token: &str, generation: u64) -> Option<&CachedToken> {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
        self.entries.get(token)
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, token: &str, entry: CachedToken, now: u64, leeway: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, cached| cached.expires.saturating_add(leeway) >= now);
        }
        if self.entries.len() >= self.capacity {
            self.evict_some();
        }
        self.entries.insert(token.into(), entry);
    }

    /// Drops entries, the first in the map's order, until an eighth of the capacity is
    /// free. The order comes from the map's hash seed, so the choice is arbitrary but
    /// costs no bookkeeping on the hot path.
    fn evict_some(&mut self) {
        let keep = self.capacity - 1 - self.capacity / 8;
        let mut surplus = self.entries.len().saturating_sub(keep);
        self.entries.retain(|_, _| {
            let evicted = surplus > 0;
            surplus = surplus.saturating_sub(1);
            !evicted
        });
    }

    /// Forgets `token` (it has expired).
    pub fn remove(&mut self, token: &str) {
        self.entries.remove(token);
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires: u64) -> CachedToken {
        CachedToken {
            rules_met: 0,
            user: None,
            expires,
            not_before: None,
            bound_to: None,
        }
    }

    #[test]
    fn a_new_generation_empties_the_cache() {
        let mut cache = TokenCache::new(10);
        cache.get("a", 1);
        cache.insert("a", entry(100), 0, 0);
        assert!(cache.get("a", 1).is_some());
        assert!(cache.get("a", 2).is_none());
    }

    #[test]
    fn a_full_cache_of_live_tokens_keeps_most_of_them() {
        let mut cache = TokenCache::new(64);
        for index in 0..64 {
            cache.insert(&format!("t{index}"), entry(1000), 0, 0);
        }
        cache.insert("new", entry(1000), 0, 0);
        assert!(cache.get("new", 0).is_some());
        assert_eq!(cache.len(), 64 - 64 / 8);
        let kept = (0..64)
            .filter(|index| cache.get(&format!("t{index}"), 0).is_some())
            .count();
        assert_eq!(kept, 64 - 64 / 8 - 1);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let mut cache = TokenCache::new(2);
        cache.insert("old", entry(10), 0, 0);
        cache.insert("live", entry(1000), 0, 0);
        cache.insert("new", entry(1000), 500, 0);
        assert!(cache.get("old", 0).is_none());
        assert!(cache.get("live", 0).is_some());
        assert_eq!(cache.len(), 2);
    }
}
