//! A small map fed by a watch: for each object the watch shows, only what the operator needs of
//! it (a stamp, the pods a Service routes to), keyed by namespace and name. A full reflector
//! store would keep whole objects; at a thousand DindDaemons that is most of the memory.
//!
//! Re-list aware: a (re-)list is collected aside and swapped in when it ends, so objects deleted
//! while a watch was down disappear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Resource;
use kube::runtime::watcher;

/// `(namespace, name)` of a watched object.
pub type Key = (String, String);

#[derive(Debug)]
pub struct WatchMap<V> {
    state: Arc<Mutex<State<V>>>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<V> Clone for WatchMap<V> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), ready: self.ready.clone() }
    }
}

#[derive(Debug)]
struct State<V> {
    entries: HashMap<Key, V>,
    relisting: Option<HashMap<Key, V>>,
}

impl<V> Default for WatchMap<V> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State { entries: HashMap::new(), relisting: None })),
            ready: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl<V: Clone> WatchMap<V> {
    /// Folds one watch event in; `value` extracts what is kept of an object (None: nothing).
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>, value: impl Fn(&K) -> Option<V>) {
        let entry = |obj: &K| {
            let meta = obj.meta();
            Some(((meta.namespace.clone().unwrap_or_default(), meta.name.clone()?), value(obj)?))
        };
        let Ok(mut state) = self.state.lock() else { return };
        match event {
            watcher::Event::Init => state.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(list), Some((key, v))) = (state.relisting.as_mut(), entry(obj)) {
                    list.insert(key, v);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = state.relisting.take() {
                    state.entries = list;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(obj) => match entry(obj) {
                Some((key, v)) => {
                    state.entries.insert(key, v);
                }
                None => {
                    let meta = obj.meta();
                    if let Some(name) = meta.name.clone() {
                        state.entries.remove(&(meta.namespace.clone().unwrap_or_default(), name));
                    }
                }
            },
            watcher::Event::Delete(obj) => {
                let meta = obj.meta();
                if let Some(name) = meta.name.clone() {
                    state.entries.remove(&(meta.namespace.clone().unwrap_or_default(), name));
                }
            }
        }
    }

    /// The value kept for `namespace/name`, if the watch shows such an object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        self.state.lock().ok()?.entries.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// The values of a namespace that satisfy `keep`.
    pub fn values_in(&self, namespace: &str, keep: impl Fn(&V) -> bool) -> Vec<V> {
        let Ok(state) = self.state.lock() else { return Vec::new() };
        state.entries.iter().filter(|((ns, _), v)| ns == namespace && keep(v)).map(|(_, v)| v.clone()).collect()
    }

    /// Waits for the first list to complete. Any number of tasks may wait.
    pub async fn wait_until_ready(&self) {
        // The sender lives as long as `self`, so this cannot fail.
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }
}
