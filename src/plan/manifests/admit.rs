//! Admitting a pod set as the webhooks would: steering's decision applied (or its denial
//! recorded) once per set, or per replica when replicas differ in more than their names, and the
//! capacity split each set's pods ask for.

use super::*;

/// What admission needs besides the pod: shared, read-only, by all threads.
pub(super) struct Admission<'a> {
    pub(super) steering: &'a Steering,
    pub(super) namespace_labels: &'a HashMap<String, BTreeMap<String, String>>,
}

impl Admission<'_> {
    /// Admit every replica of `set` as the webhook would.
    pub(super) fn admit(&self, set: PodSet) -> Result<Admitted, ManifestError> {
        let PodSet {
            at,
            namespace,
            mut base,
            prefix,
            replicas,
            daemon,
        } = set;
        let per_replica = replicas
            .iter()
            .any(|r| !r.labels.is_empty() || !r.annotations.is_empty());
        let mut out = Admitted {
            pods: Vec::with_capacity(replicas.len()),
            daemon,
            denied: Vec::new(),
            split: None,
        };
        if per_replica {
            for replica in replicas {
                let mut pod = base.clone();
                stamp(&mut pod, &replica);
                match self.mutate(&mut pod, &namespace, &at, prefix)? {
                    Admit::Denied(message) => out
                        .denied
                        .push((format!("{namespace}/{}", replica.name), message)),
                    Admit::Admitted(split) => {
                        out.split = out.split.or(split);
                        out.pods.push(decode(&pod, &at, prefix)?);
                    }
                }
            }
            return Ok(out);
        }
        // Replicas differ only in name: decide once, on the first one as it would arrive.
        if let Some(first) = replicas.first() {
            stamp(&mut base, first);
        }
        match self.mutate(&mut base, &namespace, &at, prefix)? {
            Admit::Denied(message) => {
                out.denied = replicas
                    .into_iter()
                    .map(|replica| (format!("{namespace}/{}", replica.name), message.clone()))
                    .collect();
                return Ok(out);
            }
            Admit::Admitted(split) => out.split = split,
        }
        // Typed even with no replicas, so that a bad template is reported whatever the count.
        let pod: Pod = decode(&base, &at, prefix)?;
        if let Some((last, rest)) = replicas.split_last() {
            for replica in rest {
                let mut copy = pod.clone();
                copy.metadata.name = Some(replica.name.clone());
                out.pods.push(copy);
            }
            let mut pod = pod;
            pod.metadata.name = Some(last.name.clone());
            out.pods.push(pod);
        }
        Ok(out)
    }

    /// Decide as the webhook would and apply the patch: denied with a message, or admitted with
    /// the workload split its pods ask for (their capacity types are chosen in [`expand`]).
    fn mutate(
        &self,
        pod: &mut Value,
        namespace: &str,
        at: &At,
        prefix: &str,
    ) -> Result<Admit, ManifestError> {
        let view: PodView = decode(pod, at, prefix)?;
        let decision = self.steering.decide(&PodAdmission {
            operation: Operation::Create,
            group: "",
            kind: "Pod",
            namespace,
            pod: Some(&view),
            namespace_labels: self.namespace_labels.get(namespace),
        });
        let rule = match &decision {
            Decision::Patch { rule, .. } | Decision::Unchanged { rule, .. } => Some(rule.as_str()),
            Decision::Deny { .. } | Decision::Skip(_) => None,
        };
        let split = match rule.map(|rule| self.steering.split_for(rule, &view)) {
            Some(SplitAsk::Invalid(message)) => return Ok(Admit::Denied(message)),
            Some(SplitAsk::Choose { workload, split }) => {
                Some((format!("{namespace}/{workload}"), split))
            }
            Some(SplitAsk::None | SplitAsk::NotApplicable(_)) | None => None,
        };
        match decision {
            // On failure the pod is dropped with the error: no need for patch's undo log.
            Decision::Patch { patch, .. } => {
                json_patch::patch_unsafe(pod, &patch).map_err(|e| {
                    at.field(
                        format!("{prefix}spec"),
                        format!("the webhook's patch does not apply: {e}"),
                    )
                })?
            }
            Decision::Deny { message, .. } => return Ok(Admit::Denied(message)),
            Decision::Skip(_) | Decision::Unchanged { .. } => {}
        }
        Ok(Admit::Admitted(split))
    }
}

/// What admission did with one pod.
pub(super) enum Admit {
    Denied(String),
    Admitted(Option<(String, Split)>),
}

/// Give a pod object a replica's name and labels.
pub(super) fn stamp(pod: &mut Value, replica: &Replica) {
    let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    meta.insert("name".to_owned(), Value::String(replica.name.clone()));
    for (field, pairs) in [
        ("labels", &replica.labels),
        ("annotations", &replica.annotations),
    ] {
        if pairs.is_empty() {
            continue;
        }
        let map = meta
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(map) = map.as_object_mut() {
            for (k, v) in pairs {
                map.insert((*k).to_owned(), Value::String(v.clone()));
            }
        }
    }
}
