//! Translation that keeps its results between snapshots, so a change costs what it
//! touches (kube-proxy's service change tracker and EndpointSliceCache, in one).
//!
//! A [`Translator`] holds the objects it was given and, per Service, the Service ports
//! it made of them (shared `Arc`s, Maglev tables included). News comes per kind as
//! [`Changes`]: the whole set (a file read, an API list) or the objects that changed
//! (API watch events). A changed Service, or a changed slice of it, marks that Service
//! for translation again; a changed Node redoes the (small) node view. Building a
//! snapshot then only re-translates what is marked. When every re-translated Service
//! kept its frontends (the common change: endpoints), the previous snapshot is patched
//! with the new ports ([`Snapshot::with_ports`]); otherwise the kept ports are
//! assembled, in (namespace, name) order, into a new snapshot. Either way it is the
//! snapshot [`crate::translate::translate`] builds from nothing, which the tests check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kxdp_dataplane::snapshot::{
    sort_endpoints, LocalNode, RemoteNode, ServiceId, ServicePort, Snapshot, SnapshotBuilder,
    SpecError,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::objects::{ObjectError, Objects};
use crate::translate::{
    describe_nodes, parse_slice, service_ports, ParsedSlice, PortOutcome, TranslateConfig,
    TranslateError, Translated,
};

/// Services to translate before more than one thread is worth starting.
const PARALLEL_FROM: usize = 1024;

/// An object's (namespace, name); Nodes have the namespace "".
pub type Key = (String, String);

/// One kind's news since the last build.
#[derive(Debug)]
pub enum Changes<K> {
    /// Every object of the kind, in the source's order: what is not here is gone.
    All(Vec<Arc<K>>),
    /// These objects changed; None means deleted.
    Some(Vec<(Key, Option<Arc<K>>)>),
}

impl<K> Changes<K> {
    pub fn is_empty(&self) -> bool {
        matches!(self, Changes::Some(v) if v.is_empty())
    }
}

/// What became of one port of a Service, kept until the Service or its slices change.
#[derive(Debug)]
enum Item {
    Port {
        /// In `spec.ports`.
        index: usize,
        port: Arc<ServicePort>,
        placed: Placed,
    },
    Error(ObjectError),
}

/// Where the last snapshot has a Service port.
#[derive(Clone, Debug)]
enum Placed {
    /// Not in a snapshot yet.
    Nowhere,
    At(ServiceId),
    /// Left out: another port has one of its frontends.
    Taken(ObjectError),
}

impl Item {
    /// Would this item take the place `old` had in a snapshot? (Same port, same
    /// frontends; or both errors.)
    fn fits(&self, old: &Item) -> bool {
        match (self, old) {
            (
                Item::Port { index, port, .. },
                Item::Port {
                    index: i, port: p, ..
                },
            ) => index == i && port.same_frontends(p),
            (Item::Error(_), Item::Error(_)) => true,
            _ => false,
        }
    }

    fn error(&self) -> Option<&ObjectError> {
        match self {
            Item::Error(e)
            | Item::Port {
                placed: Placed::Taken(e),
                ..
            } => Some(e),
            Item::Port { .. } => None,
        }
    }
}

/// The node view: this node, the others, and what was wrong with their Nodes.
type NodeView = Result<(LocalNode, Vec<RemoteNode>, Vec<ObjectError>), TranslateError>;

/// See the module documentation.
pub struct Translator {
    cfg: TranslateConfig,
    services: HashMap<Key, Arc<Service>>,
    /// Every translated Service's ports, by (namespace, name): the snapshot's order.
    results: BTreeMap<Key, Vec<Item>>,
    /// Services whose object or slices changed since they were last translated.
    dirty: HashSet<Key>,
    /// Every Service is to be translated again (a whole set came).
    redo_all: bool,
    /// See [`Translator::set_threads`].
    threads: usize,
    /// Services with an error among their items.
    with_errors: BTreeSet<Key>,
    /// The last snapshot built, and whether the next one can be patched from it with
    /// `replaced` (nothing changed but ports that kept their frontends).
    last: Option<Arc<Snapshot>>,
    patchable: bool,
    replaced: Vec<(ServiceId, Arc<ServicePort>)>,
    /// Each attached slice's Service.
    slice_owner: HashMap<Key, Key>,
    /// Each Service's slices, sorted by slice name (the order their endpoints merge
    /// in); usually one.
    slices_of: HashMap<Key, Vec<(String, ParsedSlice)>>,
    slice_errors: BTreeMap<Key, Vec<ObjectError>>,
    nodes: BTreeMap<String, Arc<Node>>,
    /// None when a Node changed since it was last made.
    node_view: Option<NodeView>,
    /// Objects a whole set held twice or without a name, per kind (Node, slice,
    /// Service): reported until the next whole set of that kind.
    set_errors: [Vec<ObjectError>; 3],
}

impl Translator {
    /// Lets the next builds use `n` threads for large translations (a whole
    /// cluster). kxdp gives it every core for its first build, made before any worker
    /// forwards, and one afterwards, so that a relist never competes with them.
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub fn new(cfg: TranslateConfig) -> Translator {
        Translator {
            cfg,
            services: HashMap::default(),
            results: BTreeMap::new(),
            dirty: HashSet::default(),
            redo_all: false,
            threads: 1,
            with_errors: BTreeSet::new(),
            last: None,
            patchable: false,
            replaced: Vec::new(),
            slice_owner: HashMap::default(),
            slices_of: HashMap::default(),
            slice_errors: BTreeMap::new(),
            nodes: BTreeMap::new(),
            node_view: None,
            set_errors: Default::default(),
        }
    }

    /// Takes `objects` as the whole truth (a file read).
    pub fn replace(&mut self, objects: Objects) {
        fn arcs<K>(v: Vec<K>) -> Vec<Arc<K>> {
            v.into_iter().map(Arc::new).collect()
        }
        self.apply_nodes(Changes::All(arcs(objects.nodes)));
        self.apply_slices(Changes::All(arcs(objects.slices)));
        self.apply_services(Changes::All(arcs(objects.services)));
    }

    pub fn apply_services(&mut self, changes: Changes<Service>) {
        match changes {
            Changes::All(all) => {
                self.services.clear();
                let mut errors = Vec::new();
                for s in all {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                    let Some(key) = named(ns, s.metadata.name.as_deref()) else {
                        errors.push(ObjectError::namespaced(
                            "Service",
                            ns,
                            "",
                            "metadata.name is missing",
                        ));
                        continue;
                    };
                    if self.services.contains_key(&key) {
                        errors.push(ObjectError::namespaced(
                            "Service",
                            &key.0,
                            &key.1,
                            "a Service of the same name came earlier in the objects; \
                             this one is ignored",
                        ));
                        continue;
                    }
                    self.services.insert(key, s);
                }
                // Gone ones too: they leave `results` when translated again.
                self.redo_all = true;
                self.set_errors[2] = errors;
            }
            Changes::Some(changed) => {
                for (key, s) in changed {
                    match s {
                        Some(s) => self.services.insert(key.clone(), s),
                        None => self.services.remove(&key),
                    };
                    self.mark(key);
                }
            }
        }
    }

    pub fn apply_slices(&mut self, changes: Changes<EndpointSlice>) {
        match changes {
            Changes::All(all) => {
                // Every Service is translated again (their slices are all new).
                self.redo_all = true;
                self.slice_owner.clear();
                self.slices_of.clear();
                self.slice_errors.clear();
                let mut seen: HashSet<(&str, &str)> = HashSet::default();
                let mut errors = Vec::new();
                for s in &all {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                    let name = s.metadata.name.as_deref().unwrap_or_default();
                    if !seen.insert((ns, name)) {
                        errors.push(ObjectError::namespaced(
                            "EndpointSlice",
                            ns,
                            name,
                            "an EndpointSlice of the same name came earlier in the objects; \
                             this one is ignored",
                        ));
                        continue;
                    }
                    self.set_slice((ns.to_owned(), name.to_owned()), Some(s));
                }
                self.set_errors[1] = errors;
            }
            Changes::Some(changed) => {
                for (key, s) in changed {
                    self.set_slice(key, s.as_deref());
                }
            }
        }
    }

    pub fn apply_nodes(&mut self, changes: Changes<Node>) {
        if changes.is_empty() {
            return;
        }
        match changes {
            Changes::All(all) => {
                self.nodes.clear();
                let mut errors = Vec::new();
                for n in all {
                    let Some((_, name)) = named("", n.metadata.name.as_deref()) else {
                        errors.push(ObjectError::cluster("Node", "", "metadata.name is missing"));
                        continue;
                    };
                    if self.nodes.contains_key(&name) {
                        errors.push(ObjectError::cluster(
                            "Node",
                            &name,
                            "a Node of the same name came earlier in the objects; this one is \
                             ignored",
                        ));
                        continue;
                    }
                    self.nodes.insert(name, n);
                }
                self.set_errors[0] = errors;
            }
            Changes::Some(changed) => {
                for ((_, name), n) in changed {
                    match n {
                        Some(n) => self.nodes.insert(name, n),
                        None => self.nodes.remove(&name),
                    };
                }
            }
        }
        self.node_view = None;
    }

    /// Detaches the slice `key` from its Service, then reads and attaches its new
    /// version (if any); both Services are marked for translation.
    fn set_slice(&mut self, key: Key, slice: Option<&EndpointSlice>) {
        if let Some(owner) = self.slice_owner.remove(&key) {
            if let Some(slices) = self.slices_of.get_mut(&owner) {
                slices.retain(|(name, _)| *name != key.1);
                if slices.is_empty() {
                    self.slices_of.remove(&owner);
                }
            }
            self.mark(owner);
        }
        self.slice_errors.remove(&key);
        let Some(slice) = slice else { return };
        let mut errors = Vec::new();
        let parsed = parse_slice(&key.0, &key.1, slice, &self.cfg.node_name, &mut errors);
        if !errors.is_empty() {
            self.slice_errors.insert(key.clone(), errors);
        }
        let Some((service, parsed)) = parsed else {
            return;
        };
        let owner = (key.0.clone(), service);
        match self.slices_of.get_mut(&owner) {
            Some(slices) => match slices.binary_search_by(|(name, _)| name.cmp(&key.1)) {
                Ok(at) => slices[at].1 = parsed,
                Err(at) => slices.insert(at, (key.1.clone(), parsed)),
            },
            None => {
                self.slices_of
                    .insert(owner.clone(), vec![(key.1.clone(), parsed)]);
            }
        }
        self.slice_owner.insert(key, owner.clone());
        self.mark(owner);
    }

    /// Marks a Service for translation (all are, after a whole set).
    fn mark(&mut self, key: Key) {
        if !self.redo_all {
            self.dirty.insert(key);
        }
    }

    /// Translates the marked Services again; a port whose spec did not change keeps
    /// its `ServicePort` (and Maglev tables). Notes whether the last snapshot can be
    /// patched, and with what.
    fn refresh(&mut self) {
        let keys: Vec<Key> = if std::mem::take(&mut self.redo_all) {
            self.dirty.clear();
            let gone = self
                .results
                .keys()
                .filter(|k| !self.services.contains_key(*k));
            self.services.keys().chain(gone).cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for (key, items) in self.translate_all(keys) {
            let old = self.results.remove(&key).unwrap_or_default();
            let items = self.place_like(items, &old);
            if items.iter().any(|i| i.error().is_some()) {
                self.with_errors.insert(key.clone());
            } else {
                self.with_errors.remove(&key);
            }
            if !items.is_empty() {
                self.results.insert(key, items);
            }
        }
        if self.node_view.is_none() {
            let nodes: Vec<(&str, &Node)> =
                self.nodes.iter().map(|(n, o)| (n.as_str(), &**o)).collect();
            let mut errors = Vec::new();
            let view = describe_nodes(&nodes, &self.cfg, &mut errors)
                .map(|(local, remotes)| (local, remotes, errors));
            self.node_view = Some(view);
            self.patchable = false;
        }
    }

    /// Translates these Services (read-only), on `threads` threads when there are
    /// many: Maglev tables are most of the cost of a whole cluster.
    fn translate_all(&self, keys: Vec<Key>) -> Vec<(Key, Vec<Item>)> {
        let one = |key: &Key| -> (Key, Vec<Item>) {
            let Some(svc) = self.services.get(key) else {
                return (key.clone(), Vec::new());
            };
            let old = self.results.get(key).map_or(&[][..], Vec::as_slice);
            let slices: Vec<&ParsedSlice> = self
                .slices_of
                .get(key)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|(_, parsed)| parsed)
                .collect();
            let items = service_ports(&key.0, &key.1, svc, &slices)
                .into_iter()
                .map(|o| self.item(o, old))
                .collect();
            (key.clone(), items)
        };
        if self.threads <= 1 || keys.len() < PARALLEL_FROM {
            return keys.iter().map(one).collect();
        }
        let per_thread = keys.len().div_ceil(self.threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = keys
                .chunks(per_thread)
                .map(|part| s.spawn(|| part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("a translation thread panicked"))
                .collect()
        })
    }

    /// A translated port as an item, sharing the old item's `ServicePort` when the
    /// spec is the same.
    fn item(&self, outcome: PortOutcome, old: &[Item]) -> Item {
        match outcome {
            PortOutcome::Error(e) => Item::Error(e),
            PortOutcome::Port { index, mut spec } => {
                sort_endpoints(&mut spec);
                let kept = old.iter().find_map(|item| match item {
                    Item::Port { port, .. } if port.spec == spec => Some(port.clone()),
                    _ => None,
                });
                let port = kept
                    .unwrap_or_else(|| Arc::new(ServicePort::new(spec, self.cfg.max_table_size)));
                Item::Port {
                    index,
                    port,
                    placed: Placed::Nowhere,
                }
            }
        }
    }

    /// Gives `items` the places `old` had when they fit there (same ports with the
    /// same frontends) and notes the ports that changed, for the patch; when they do
    /// not fit, the next snapshot is assembled anew instead.
    fn place_like(&mut self, mut items: Vec<Item>, old: &[Item]) -> Vec<Item> {
        if items.len() != old.len() || items.iter().zip(old).any(|(n, o)| !n.fits(o)) {
            self.patchable = false;
            return items;
        }
        for (new, old) in items.iter_mut().zip(old) {
            if let (
                Item::Port { port, placed, .. },
                Item::Port {
                    port: was,
                    placed: at,
                    ..
                },
            ) = (new, old)
            {
                if let (Placed::At(id), false) = (at, Arc::ptr_eq(port, was)) {
                    self.replaced.push((*id, port.clone()));
                }
                *placed = at.clone();
            }
        }
        items
    }

    /// The snapshot of everything given so far. Errors name every object that is
    /// (still) wrong, not only the ones that changed.
    pub fn build(&mut self, generation: u64) -> Result<Translated, TranslateError> {
        self.refresh();
        let (local, remotes, node_errors) = match &self.node_view {
            Some(Ok(view)) => view,
            Some(Err(e)) => return Err(e.clone()),
            None => unreachable!("refresh makes the node view"),
        };
        let mut errors: Vec<ObjectError> = self.set_errors[0].clone();
        errors.extend(node_errors.iter().cloned());
        let replaced = std::mem::take(&mut self.replaced);
        let patched = match (&self.last, self.patchable) {
            (Some(last), true) => last.with_ports(generation, &replaced).ok(),
            _ => None,
        };
        let snapshot = match patched {
            Some(s) => s,
            None => {
                let (local, remotes) = (local.clone(), remotes.clone());
                self.assemble(generation, local, remotes)
            }
        };
        errors.extend(self.set_errors[1].iter().cloned());
        errors.extend(self.slice_errors.values().flatten().cloned());
        errors.extend(self.set_errors[2].iter().cloned());
        for key in &self.with_errors {
            errors.extend(self.results[key].iter().filter_map(Item::error).cloned());
        }
        let snapshot = Arc::new(snapshot);
        self.last = Some(snapshot.clone());
        self.patchable = true;
        Ok(Translated { snapshot, errors })
    }

    /// A snapshot of every kept port, in (namespace, name) order; notes where each
    /// port went.
    fn assemble(
        &mut self,
        generation: u64,
        local: LocalNode,
        remotes: Vec<RemoteNode>,
    ) -> Snapshot {
        let mut builder = SnapshotBuilder::new(generation, local, self.cfg.max_table_size);
        for r in remotes {
            builder.add_remote_node(r);
        }
        builder.reserve(self.results.len());
        self.with_errors.clear();
        for ((ns, name), items) in self.results.iter_mut() {
            let mut any_error = false;
            for item in items.iter_mut() {
                let Item::Port {
                    index,
                    port,
                    placed,
                } = item
                else {
                    any_error = true;
                    continue;
                };
                *placed = match builder.add_port(port.clone()) {
                    Ok(id) => Placed::At(id),
                    Err(SpecError::FrontendTaken { key, owner }) => {
                        any_error = true;
                        Placed::Taken(ObjectError::namespaced(
                            "Service",
                            ns,
                            name,
                            format!(
                                "spec.ports[{index}]: {} {}:{} is already taken by {owner}; \
                                 this port is ignored",
                                key.proto.name(),
                                key.ip,
                                key.port
                            ),
                        ))
                    }
                };
            }
            if any_error {
                self.with_errors.insert((ns.clone(), name.clone()));
            }
        }
        builder.build()
    }
}

/// The key of a named object; None when the name is missing or empty.
fn named(ns: &str, name: Option<&str>) -> Option<Key> {
    name.filter(|n| !n.is_empty())
        .map(|n| (ns.to_owned(), n.to_owned()))
}
