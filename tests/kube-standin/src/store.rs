//! The in-memory store: resource definitions (built-in and from CRDs), objects as JSON, one
//! global resourceVersion counter, and the event history watches replay from.

use crate::util::{ApiError, Rng, is_dns_label, is_dns_subdomain, now_rfc3339, rfc3339};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// One REST resource: where it is served and how it behaves.
#[derive(Debug, Clone)]
pub(crate) struct ResourceDef {
    pub group: String,
    /// Served versions; the first is the preferred one.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    /// Has a `status` subresource.
    pub status: bool,
    pub short_names: Vec<String>,
    /// A custom resource (served because of a CRD).
    pub custom: bool,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            status,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            custom: false,
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

fn builtins() -> Vec<ResourceDef> {
    let b = ResourceDef::builtin;
    vec![
        b("", "v1", "namespaces", "Namespace", false, true, &["ns"]),
        b("", "v1", "pods", "Pod", true, true, &["po"]),
        b("", "v1", "nodes", "Node", false, true, &["no"]),
        b("", "v1", "configmaps", "ConfigMap", true, false, &["cm"]),
        b("", "v1", "secrets", "Secret", true, false, &[]),
        b("", "v1", "services", "Service", true, true, &["svc"]),
        b(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        ),
        b("", "v1", "events", "Event", true, false, &["ev"]),
        b(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            &[],
        ),
        b(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &["ev"],
        ),
        b(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            true,
            &["pdb"],
        ),
        b(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
            false,
            &[],
        ),
        b(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
            false,
            &[],
        ),
        b(
            CRD_GROUP,
            "v1",
            CRD_PLURAL,
            "CustomResourceDefinition",
            false,
            true,
            &["crd", "crds"],
        ),
    ]
}

pub(crate) type ResKey = (String, String); // (group, plural)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed write, kept in the history and broadcast to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub res: ResKey,
    pub key: String,
    pub namespace: Option<String>,
    pub ty: ChangeType,
    /// The object after the write (for DELETED: its last state, stamped with the delete's rv).
    pub object: Arc<Value>,
    /// The object before the write (None for ADDED).
    pub prev: Option<Arc<Value>>,
}

/// What a DELETE did.
pub(crate) enum Deleted {
    /// Removed now; the last state of the object.
    Now(Arc<Value>),
    /// Marked for deletion (finalizers or pod grace); the object as it now stands.
    Pending(Arc<Value>),
    /// A pod in graceful termination: remove it after `grace` seconds unless changed.
    Graceful {
        object: Arc<Value>,
        grace: u64,
        uid: String,
    },
}

#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOpts {
    pub grace: Option<i64>,
    pub precondition_rv: Option<String>,
    pub precondition_uid: Option<String>,
    pub dry_run: bool,
}

pub(crate) struct Store {
    pub rv: u64,
    /// Events with rv <= this are gone from the history: watching from an older rv → 410.
    pub compacted_rv: u64,
    history_limit: usize,
    resources: BTreeMap<ResKey, ResourceDef>,
    objects: HashMap<ResKey, BTreeMap<String, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    pub tx: broadcast::Sender<Arc<Change>>,
    rng: Rng,
}

pub(crate) fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let Value::Object(o) = obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if m.is_null() {
        *m = json!({});
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn resource_version_of(v: &Value) -> &str {
    str_at(v, "/metadata/resourceVersion").unwrap_or("")
}

fn has_finalizers(v: &Value) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Everything but metadata and status: what `metadata.generation` tracks.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    v
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        let mut s = Self {
            rv: 0,
            compacted_rv: 0,
            history_limit: history_limit.max(1),
            resources: builtins().into_iter().map(|r| (r.key(), r)).collect(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            tx,
            rng: Rng::from_time(),
        };
        if let Some(ns) = s
            .resources
            .get(&(String::new(), "namespaces".into()))
            .cloned()
        {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                // Cannot fail: the names are valid and new.
                let _ = s.create(&ns, "v1", None, obj, false);
            }
        }
        s
    }

    /// The definition of `plural` in `group`, if served at `version`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .get(&(group.to_string(), plural.to_string()))
            .filter(|r| r.versions.iter().any(|v| v == version))
    }

    pub fn resources(&self) -> impl Iterator<Item = &ResourceDef> {
        self.resources.values()
    }

    pub fn get(&self, res: &ResourceDef, key: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&res.key())
            .and_then(|m| m.get(key))
            .cloned()
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .is_some_and(|m| m.contains_key(ns))
    }

    /// All objects of a resource as they were at `at` (the current state when None).
    pub fn objects_at(
        &self,
        res: &ResourceDef,
        at: Option<u64>,
    ) -> Result<BTreeMap<String, Arc<Value>>, ApiError> {
        let mut m = self.objects.get(&res.key()).cloned().unwrap_or_default();
        let Some(at) = at.filter(|&a| a < self.rv) else {
            return Ok(m);
        };
        if at < self.compacted_rv {
            return Err(ApiError::gone(format!(
                "The resourceVersion for the provided list is too old: {at} (oldest retained: {})",
                self.compacted_rv
            )));
        }
        let key = res.key();
        for ch in self.history.iter().rev() {
            if ch.rv <= at {
                break;
            }
            if ch.res != key {
                continue;
            }
            match (&ch.ty, &ch.prev) {
                (ChangeType::Added, _) | (_, None) => {
                    m.remove(&ch.key);
                }
                (_, Some(prev)) => {
                    m.insert(ch.key.clone(), prev.clone());
                }
            }
        }
        Ok(m)
    }

    /// History events after `rv` (the caller checked `rv >= compacted_rv`).
    pub fn history_after(&self, rv: u64) -> Vec<Arc<Change>> {
        let start = self.history.partition_point(|c| c.rv <= rv);
        self.history.range(start..).cloned().collect()
    }

    /// Forget the whole history: a watch from any rv older than now gets 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Record a write: stamp the next resourceVersion, store it, append it to the history,
    /// tell the watches, and apply its side effects (CRDs, namespace deletion).
    fn commit(
        &mut self,
        res: &ResourceDef,
        key: &str,
        ty: ChangeType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        if let Ok(m) = meta_mut(&mut obj) {
            m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        let obj = Arc::new(obj);
        let map = self.objects.entry(res.key()).or_default();
        if ty == ChangeType::Deleted {
            map.remove(key);
        } else {
            map.insert(key.to_string(), obj.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            res: res.key(),
            key: key.to_string(),
            namespace: str_at(&obj, "/metadata/namespace")
                .map(str::to_string)
                .filter(|_| res.namespaced),
            ty,
            object: obj.clone(),
            prev,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        let _ = self.tx.send(change);

        if res.is(CRD_GROUP, CRD_PLURAL) {
            match ty {
                ChangeType::Deleted => {
                    if let Ok(def) = crd_resource(&obj) {
                        self.cascade(&def, None);
                        self.resources.remove(&def.key());
                    }
                }
                _ => {
                    if let Ok(def) = crd_resource(&obj) {
                        self.resources.insert(def.key(), def);
                    }
                }
            }
        } else if res.is("", "namespaces") && ty == ChangeType::Deleted {
            let namespaced: Vec<ResourceDef> = self
                .resources
                .values()
                .filter(|r| r.namespaced)
                .cloned()
                .collect();
            for def in namespaced {
                self.cascade(&def, Some(key));
            }
        }
        obj
    }

    /// Delete every object of `res` (in namespace `ns`, if given) at once.
    fn cascade(&mut self, res: &ResourceDef, ns: Option<&str>) {
        let Some(map) = self.objects.get(&res.key()) else {
            return;
        };
        let prefix = ns.map(|n| format!("{n}/"));
        let victims: Vec<(String, Arc<Value>)> = map
            .iter()
            .filter(|(k, _)| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in victims {
            self.commit(res, &k, ChangeType::Deleted, (*v).clone(), Some(v));
        }
    }

    /// Check and fill `apiVersion` and `kind`.
    fn check_type(res: &ResourceDef, version: &str, obj: &mut Value) -> Result<(), ApiError> {
        let want_av = res.api_version(version);
        let Value::Object(o) = obj else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        };
        match o.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != res.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    res.kind
                )));
            }
            _ => {}
        }
        match o.get("apiVersion").and_then(Value::as_str) {
            Some(av) if !av.is_empty() && av != want_av => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
            _ => {}
        }
        o.insert("kind".into(), json!(res.kind));
        o.insert("apiVersion".into(), json!(want_av));
        Ok(())
    }

    pub fn create(
        &mut self,
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let obj = self.prepare_new(res, version, ns, obj, true)?;
        if dry_run {
            return Ok(Arc::new(obj));
        }
        self.commit_new(res, obj)
    }

    /// What the apiserver does to a create's body before admission: decode (kind and
    /// apiVersion), set the namespace from the path, wipe the system fields.
    pub fn normalize_new(
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type(res, version, &mut obj)?;
        let meta = meta_mut(&mut obj)?;
        Self::fill_namespace(res, ns, meta)?;
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        Ok(obj)
    }

    fn fill_namespace(
        res: &ResourceDef,
        ns: Option<&str>,
        meta: &mut Map<String, Value>,
    ) -> Result<(), ApiError> {
        if res.namespaced {
            let ns = ns.ok_or_else(ApiError::method_not_allowed)?;
            match meta.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(())
    }

    /// The object a create would store (name generated, uid, timestamps, create strategy),
    /// without storing it. `check_exists`: fail with 409 AlreadyExists now.
    pub fn prepare_new(
        &mut self,
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        mut obj: Value,
        check_exists: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(res, version, &mut obj)?;
        let meta = meta_mut(&mut obj)?;
        Self::fill_namespace(res, ns, meta)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let generate = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    &res.group,
                    &res.kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            loop {
                name = format!("{generate}{}", self.rng.name_suffix());
                if self
                    .get(res, &object_key(ns.filter(|_| res.namespaced), &name))
                    .is_none()
                {
                    break;
                }
            }
            meta.insert("name".into(), json!(name));
        }
        let name_ok = if res.is("", "namespaces") {
            is_dns_label(&name)
        } else {
            is_dns_subdomain(&name)
        };
        if !name_ok {
            return Err(ApiError::invalid(
                &res.group,
                &res.kind,
                &name,
                "metadata.name",
                &format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    if res.is("", "namespaces") {
                        "label"
                    } else {
                        "subdomain"
                    }
                ),
            ));
        }
        let ns = ns.filter(|_| res.namespaced);
        if let Some(ns) = ns
            && !self.namespace_exists(ns)
        {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        if check_exists && self.get(res, &object_key(ns, &name)).is_some() {
            return Err(ApiError::already_exists(&res.group, &res.plural, &name));
        }
        let uid = self.rng.uuid();
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        prepare_create(res, &mut obj)?;
        Ok(obj)
    }

    /// Store an object [`Store::prepare_new`] made: 404 if its namespace is gone, 409 if
    /// its name is taken.
    pub fn commit_new(&mut self, res: &ResourceDef, obj: Value) -> Result<Arc<Value>, ApiError> {
        let name = str_at(&obj, "/metadata/name").unwrap_or("").to_string();
        let ns = str_at(&obj, "/metadata/namespace")
            .filter(|_| res.namespaced)
            .map(str::to_string);
        if let Some(ns) = ns.as_deref()
            && !self.namespace_exists(ns)
        {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        let key = object_key(ns.as_deref(), &name);
        if self.get(res, &key).is_some() {
            return Err(ApiError::already_exists(&res.group, &res.plural, &name));
        }
        Ok(self.commit(res, &key, ChangeType::Added, obj, None))
    }

    /// Every stored object of `group`/`plural`.
    pub fn all_of(&self, group: &str, plural: &str) -> Vec<Arc<Value>> {
        self.objects
            .get(&(group.to_string(), plural.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any object of `group`/`plural` is stored.
    pub fn has_any(&self, group: &str, plural: &str) -> bool {
        self.objects
            .get(&(group.to_string(), plural.to_string()))
            .is_some_and(|m| !m.is_empty())
    }

    /// PUT: replace the object (or, with `status_only`, its status).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let key = object_key(ns, name);
        let old = self
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        let body = Self::put_candidate(res, version, ns, name, body)?;
        self.write_update(res, &key, old, body, status_only, dry_run)
    }

    /// A PUT body, checked against the path (kind, apiVersion, name, namespace).
    pub fn put_candidate(
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type(res, version, &mut body)?;
        let meta = meta_mut(&mut body)?;
        let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(ns) = ns {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
        }
        Ok(body)
    }

    pub fn current(
        &self,
        res: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.get(res, &object_key(ns, name))
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))
    }

    /// PATCH: `apply` computes the patched object from the current one (under the lock).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        res: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        name: &str,
        apply: impl FnOnce(&Value) -> Result<Value, ApiError>,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let key = object_key(ns, name);
        let old = self
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        let patched = Self::patch_candidate(res, version, name, &old, apply)?;
        self.write_update(res, &key, old, patched, status_only, dry_run)
    }

    /// The current object `old` with a patch applied, checked (kind, name).
    pub fn patch_candidate(
        res: &ResourceDef,
        version: &str,
        name: &str,
        old: &Value,
        apply: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut base = old.clone();
        if let Value::Object(o) = &mut base {
            o.insert("apiVersion".into(), json!(res.api_version(version)));
        }
        let mut patched = apply(&base)?;
        if !patched.is_object() {
            return Err(ApiError::invalid(
                &res.group,
                &res.kind,
                name,
                "",
                "the patch did not produce an object",
            ));
        }
        Self::check_type(res, version, &mut patched)?;
        if str_at(&patched, "/metadata/name") != Some(name) {
            return Err(ApiError::invalid(
                &res.group,
                &res.kind,
                name,
                "metadata.name",
                "Invalid value: field is immutable",
            ));
        }
        Ok(patched)
    }

    /// Update from a candidate computed against `old`. `Ok(None)`: the object changed since
    /// (the caller starts over, as the apiserver's GuaranteedUpdate does).
    #[allow(clippy::too_many_arguments)]
    pub fn update_from(
        &mut self,
        res: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        old: &Arc<Value>,
        body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Option<Arc<Value>>, ApiError> {
        let key = object_key(ns, name);
        let current = self
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        if !Arc::ptr_eq(&current, old) {
            return Ok(None);
        }
        self.write_update(res, &key, current, body, status_only, dry_run)
            .map(Some)
    }

    fn write_update(
        &mut self,
        res: &ResourceDef,
        key: &str,
        old: Arc<Value>,
        body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let name = str_at(&old, "/metadata/name").unwrap_or("").to_string();
        let body_rv = resource_version_of(&body);
        if !body_rv.is_empty() && body_rv != resource_version_of(&old) {
            return Err(ApiError::conflict(&res.group, &res.plural, &name));
        }
        let mut new = if status_only {
            let mut n = (*old).clone();
            if let (Value::Object(o), Some(st)) = (&mut n, body.get("status")) {
                o.insert("status".into(), st.clone());
            }
            n
        } else {
            let mut n = body;
            if res.status
                && let Value::Object(o) = &mut n
            {
                match old.get("status") {
                    Some(st) => o.insert("status".into(), st.clone()),
                    None => o.remove("status"),
                };
            }
            n
        };
        {
            let m = meta_mut(&mut new)?;
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
            ] {
                match old.pointer(&format!("/metadata/{k}")) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert("resourceVersion".into(), json!(resource_version_of(&old)));
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                let old_fin: Vec<Value> = old
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let new_fin = m
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if new_fin.iter().any(|f| !old_fin.contains(f)) {
                    return Err(ApiError::invalid(
                        &res.group,
                        &res.kind,
                        &name,
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    ));
                }
            }
        }
        if spec_part(&new) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new)?.insert("generation".into(), json!(g + 1));
        }
        prepare_update(res, &mut new)?;
        if new == *old {
            return Ok(old);
        }
        if dry_run {
            return Ok(Arc::new(new));
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace_done = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0;
        if terminating && grace_done && !has_finalizers(&new) {
            return Ok(self.commit(res, key, ChangeType::Deleted, new, Some(old)));
        }
        Ok(self.commit(res, key, ChangeType::Modified, new, Some(old)))
    }

    /// `POST pods/{name}/binding`: assign an unbound pod to a node, as kube-apiserver's
    /// BindingREST does (GuaranteedUpdate on the pod, not an update through the strategy, so
    /// `generation` stays): the binding's `metadata.uid` / `resourceVersion` are preconditions,
    /// a terminating, already bound or scheduling-gated pod is 409 on `pods/binding`, and the
    /// binding's annotations are merged into the pod's. Sets `spec.nodeName` and the condition
    /// `PodScheduled=True`. The caller has checked the binding's name and target.
    pub fn bind(
        &mut self,
        ns: &str,
        name: &str,
        binding: &Value,
        node: &str,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let res = self
            .resources
            .get(&(String::new(), "pods".to_string()))
            .cloned()
            .ok_or_else(ApiError::no_route)?;
        let key = object_key(Some(ns), name);
        let old = self
            .get(&res, &key)
            .ok_or_else(|| ApiError::not_found("", "pods", name))?;
        if let Some(want) = str_at(binding, "/metadata/uid").filter(|u| !u.is_empty()) {
            let have = str_at(&old, "/metadata/uid").unwrap_or("");
            if want != have {
                return Err(ApiError::precondition("", "pods", name, "UID", want, have));
            }
        }
        if let Some(want) = str_at(binding, "/metadata/resourceVersion").filter(|r| !r.is_empty()) {
            let have = resource_version_of(&old);
            if want != have {
                return Err(ApiError::precondition(
                    "",
                    "pods",
                    name,
                    "ResourceVersion",
                    want,
                    have,
                ));
            }
        }
        let conflict = |detail: String| ApiError::conflict_with("pods/binding", name, &detail);
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(conflict(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(current) = str_at(&old, "/spec/nodeName").filter(|n| !n.is_empty()) {
            return Err(conflict(format!(
                "pod {name} is already assigned to node \"{current}\""
            )));
        }
        if old
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty())
        {
            return Err(conflict(format!(
                "pod {name} has non-empty .spec.schedulingGates"
            )));
        }
        let mut new = (*old).clone();
        let Value::Object(o) = &mut new else {
            return Err(ApiError::bad_request("the stored pod is not an object"));
        };
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Value::Object(spec) = spec {
            spec.insert("nodeName".into(), json!(node));
        }
        let annotations = binding
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .filter(|a| !a.is_empty());
        if let Some(extra) = annotations {
            let m = meta_mut(&mut new)?;
            let a = m.entry("annotations").or_insert_with(|| json!({}));
            if !a.is_object() {
                *a = json!({});
            }
            if let Value::Object(a) = a {
                for (k, v) in extra {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        set_pod_condition(&mut new, json!({"type": "PodScheduled", "status": "True"}));
        if dry_run {
            return Ok(());
        }
        self.commit(&res, &key, ChangeType::Modified, new, Some(old));
        Ok(())
    }

    pub fn delete(
        &mut self,
        res: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Deleted, ApiError> {
        let key = object_key(ns, name);
        let old = self
            .get(res, &key)
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        if let Some(want) = &opts.precondition_uid {
            let have = str_at(&old, "/metadata/uid").unwrap_or("");
            if want != have {
                return Err(ApiError::precondition(
                    &res.group,
                    &res.plural,
                    name,
                    "UID",
                    want,
                    have,
                ));
            }
        }
        if let Some(want) = &opts.precondition_rv {
            let have = resource_version_of(&old);
            if want != have {
                return Err(ApiError::precondition(
                    &res.group,
                    &res.plural,
                    name,
                    "ResourceVersion",
                    want,
                    have,
                ));
            }
        }
        let is_pod = res.is("", "pods");
        let grace = if is_pod {
            let phase = str_at(&old, "/status/phase").unwrap_or("");
            let scheduled = str_at(&old, "/spec/nodeName").is_some_and(|n| !n.is_empty());
            if !scheduled || phase == "Succeeded" || phase == "Failed" {
                0
            } else {
                opts.grace
                    .or_else(|| {
                        old.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
                    .max(0)
            }
        } else {
            0
        };
        let finalizers = has_finalizers(&old);
        if opts.dry_run {
            return Ok(Deleted::Now(old));
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            if grace == 0 && !finalizers {
                let last = (*old).clone();
                return Ok(Deleted::Now(self.commit(
                    res,
                    &key,
                    ChangeType::Deleted,
                    last,
                    Some(old),
                )));
            }
            return Ok(Deleted::Pending(old));
        }
        if grace == 0 && !finalizers {
            let last = (*old).clone();
            return Ok(Deleted::Now(self.commit(
                res,
                &key,
                ChangeType::Deleted,
                last,
                Some(old),
            )));
        }
        let mut marked = (*old).clone();
        let m = meta_mut(&mut marked)?;
        let at = SystemTime::now() + Duration::from_secs(grace as u64);
        m.insert("deletionTimestamp".into(), json!(rfc3339(at)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        let uid = str_at(&old, "/metadata/uid").unwrap_or("").to_string();
        let object = self.commit(res, &key, ChangeType::Modified, marked, Some(old));
        if grace > 0 {
            Ok(Deleted::Graceful {
                object,
                grace: grace as u64,
                uid,
            })
        } else {
            Ok(Deleted::Pending(object))
        }
    }

    /// A pod's grace period ran out (the kubelet's final delete): remove it, or, while
    /// finalizers remain, record `deletionGracePeriodSeconds: 0` so it goes once they do.
    pub fn finish_graceful(&mut self, res: &ResourceDef, key: &str, uid: &str) {
        let Some(old) = self.get(res, key) else {
            return;
        };
        if str_at(&old, "/metadata/uid") != Some(uid)
            || old.pointer("/metadata/deletionTimestamp").is_none()
        {
            return;
        }
        let mut last = (*old).clone();
        if let Ok(m) = meta_mut(&mut last) {
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        let ty = if has_finalizers(&old) {
            ChangeType::Modified
        } else {
            ChangeType::Deleted
        };
        self.commit(res, key, ty, last, Some(old));
    }
}

/// podutil.UpdatePodCondition: replace (or append) the condition of the same type; the
/// transition time is now unless the status is unchanged; `lastProbeTime` is null.
fn set_pod_condition(pod: &mut Value, mut condition: Value) {
    let Value::Object(o) = pod else { return };
    let status = o.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    let Value::Object(status) = status else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Value::Array(conditions) = conditions else {
        return;
    };
    let ty = condition.get("type").cloned();
    let existing = conditions.iter().position(|c| c.get("type") == ty.as_ref());
    let now = json!(now_rfc3339());
    let transition = match existing.map(|i| &conditions[i]) {
        Some(old) if old.get("status") == condition.get("status") => {
            old.get("lastTransitionTime").cloned().unwrap_or(now)
        }
        _ => now,
    };
    if let Value::Object(c) = &mut condition {
        c.insert("lastProbeTime".into(), Value::Null);
        c.insert("lastTransitionTime".into(), transition);
    }
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// What the apiserver's create strategies do to the objects nodewright uses.
fn prepare_create(res: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Value::Object(o) = obj else { return Ok(()) };
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "namespaces") => {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        (CRD_GROUP, CRD_PLURAL) => {
            let def = crd_resource(obj).map_err(|(field, msg)| {
                let name = str_at(obj, "/metadata/name").unwrap_or("");
                ApiError::invalid(CRD_GROUP, "CustomResourceDefinition", name, &field, &msg)
            })?;
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let now = now_rfc3339();
            let stored: Vec<&String> = def.versions.iter().take(1).collect();
            if let Value::Object(o) = obj {
                o.insert(
                    "status".into(),
                    json!({
                        "acceptedNames": names,
                        "storedVersions": stored,
                        "conditions": [
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                        ],
                    }),
                );
            }
        }
        _ if res.custom && res.status => {
            o.remove("status");
        }
        _ => {}
    }
    prepare_update(res, obj)
}

fn prepare_update(res: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if res.is("", "namespaces") {
        let name = str_at(obj, "/metadata/name").unwrap_or("").to_string();
        let m = meta_mut(obj)?;
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Value::Object(l) = labels {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    if res.is(CRD_GROUP, CRD_PLURAL) {
        crd_resource(obj).map_err(|(field, msg)| {
            let name = str_at(obj, "/metadata/name").unwrap_or("");
            ApiError::invalid(CRD_GROUP, "CustomResourceDefinition", name, &field, &msg)
        })?;
    }
    Ok(())
}

/// The resource a CRD declares, or the (field, message) that is wrong with it.
pub(crate) fn crd_resource(crd: &Value) -> Result<ResourceDef, (String, String)> {
    let need = |ptr: &str, field: &str| -> Result<String, (String, String)> {
        str_at(crd, ptr)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| (field.to_string(), "Required value".to_string()))
    };
    let group = need("/spec/group", "spec.group")?;
    let plural = need("/spec/names/plural", "spec.names.plural")?;
    let kind = need("/spec/names/kind", "spec.names.kind")?;
    let singular = str_at(crd, "/spec/names/singular")
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(crd, "/spec/names/listKind")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let name = str_at(crd, "/metadata/name").unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = need("/spec/scope", "spec.scope")?;
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err((
                "spec.scope".into(),
                format!(
                    "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
                ),
            ));
        }
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            (
                "spec.versions".to_string(),
                "Invalid value: must have exactly one version marked as storage version"
                    .to_string(),
            )
        })?;
    let mut served = Vec::new();
    let mut status = false;
    let mut storage = 0;
    for v in versions {
        let vname = str_at(v, "/name").ok_or_else(|| {
            (
                "spec.versions[].name".to_string(),
                "Required value".to_string(),
            )
        })?;
        if v.get("storage").and_then(Value::as_bool).unwrap_or(false) {
            storage += 1;
        }
        if v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            served.push(vname.to_string());
        }
        if v.pointer("/subresources/status").is_some() {
            status = true;
        }
    }
    if storage != 1 {
        return Err((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let short_names = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceDef {
        group,
        versions: served,
        plural,
        singular,
        kind,
        list_kind,
        namespaced,
        status,
        short_names,
        custom: true,
    })
}
