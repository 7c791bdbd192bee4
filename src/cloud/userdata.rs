//! EC2 user data that bootstraps a node into the cluster, generated the way Karpenter's AWS
//! provider does (`pkg/providers/amifamily/bootstrap`):
//!
//! - **AL2023** (the default, and `alias: al2023@…`): a MIME multi-part document whose last part is
//!   an `application/node.eks.aws` `NodeConfig` for `nodeadm` (cluster name, API server endpoint,
//!   certificate authority, service CIDR; kubelet `config` with the EC2NodeClass's kubelet settings,
//!   `maxPods` and `registerWithTaints`; kubelet `flags` `--node-labels=…` and
//!   `--register-with-taints=…`). The EC2NodeClass's `userData` comes first: a MIME document
//!   contributes its parts, a YAML mapping becomes another `NodeConfig` part (nodeadm merges them,
//!   later documents winning, so nodewright's cluster settings prevail), anything else a
//!   `text/x-shellscript` part.
//! - **AL2**: a bash part calling `/etc/eks/bootstrap.sh <cluster> … --kubelet-extra-args
//!   '--node-labels=… --register-with-taints=… …'`, after the EC2NodeClass's `userData` parts.
//! - **Custom**: the EC2NodeClass's `userData`, unchanged (the labels and taints are then the
//!   user's business).
//!
//! Bottlerocket and Windows are not supported yet.
//!
//! The taints are the NodePool's `taints` and `startupTaints` together
//! ([`registration_taints`]): the kubelet registers the node with both, so nothing lands on it
//! before the daemon that owns a startup taint has removed it.
//!
//! # Contract with kubelet stand-ins
//! The generated text (AL2023 and AL2) always contains `--node-labels=<k=v,…>` and, when there
//! are taints, `--register-with-taints=<key=value:Effect,…>`, each a single token ended by
//! whitespace or a quote. [`parse_node_args`] reads them back. Label and taint keys and values are
//! checked to hold nothing that would end such a token early.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::config::{AmiFamily, KubeletConfiguration};
use crate::model::taints::{Taint, TaintEffect};

/// The MIME boundary Karpenter uses; another is chosen when a part contains it.
const BOUNDARY: &str = "//";
pub const CONTENT_TYPE_NODECONFIG: &str = "application/node.eks.aws";
pub const CONTENT_TYPE_SHELL: &str = "text/x-shellscript; charset=\"us-ascii\"";
const NODE_LABELS_FLAG: &str = "--node-labels=";
const TAINTS_FLAG: &str = "--register-with-taints=";

/// What a node's user data is made from.
#[derive(Clone, Debug)]
pub struct Bootstrap<'a> {
    pub family: AmiFamily,
    pub cluster_name: &'a str,
    /// `https://…` of the API server.
    pub endpoint: Option<&'a str>,
    /// The cluster CA as EKS gives it (base64 of the PEM); a PEM is accepted and encoded.
    pub ca_bundle: Option<&'a str>,
    /// The service CIDR (`10.100.0.0/16`).
    pub service_cidr: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    pub taints: &'a [Taint],
    /// Overrides `kubelet.maxPods`.
    pub max_pods: Option<i64>,
    pub kubelet: Option<&'a KubeletConfiguration>,
    /// The EC2NodeClass's `userData`.
    pub custom: Option<&'a str>,
}

/// User data that cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UserDataError(pub String);

/// The user data text (not base64) for `input`.
pub fn render(input: &Bootstrap<'_>) -> Result<String, UserDataError> {
    match input.family {
        AmiFamily::Custom => Ok(input.custom.unwrap_or_default().to_owned()),
        AmiFamily::AL2023 => {
            check_flag_safe(input.labels, input.taints)?;
            let mut parts = custom_parts(input.custom, true)?;
            parts.push(Part::new(CONTENT_TYPE_NODECONFIG, node_config(input)?));
            Ok(mime(&parts))
        }
        AmiFamily::AL2 => {
            check_flag_safe(input.labels, input.taints)?;
            let mut parts = custom_parts(input.custom, false)?;
            parts.push(Part::new(CONTENT_TYPE_SHELL, bootstrap_sh(input)));
            Ok(mime(&parts))
        }
        other => Err(UserDataError(format!(
            "amiFamily {other:?} is not supported by nodewright (AL2023, AL2 and Custom are)"
        ))),
    }
}

/// `--node-labels=` value: `k=v,k2=v2` (sorted by key).
pub fn node_labels_value(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// `--register-with-taints=` value: `key=value:Effect,key:Effect`.
pub fn taints_value(taints: &[Taint]) -> String {
    taints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The taints a node registers with: every taint of `lists`, in order, without a second taint
/// of the same key and effect (the kubelet refuses to register with such a pair, whatever the
/// values), so a startup taint that repeats one of the pool's taints is passed once.
pub fn registration_taints(lists: &[&[Taint]]) -> Vec<Taint> {
    let mut out: Vec<Taint> = Vec::new();
    for taint in lists.iter().copied().flatten() {
        if !out
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            out.push(taint.clone());
        }
    }
    out
}

/// The labels and taints the kubelet is told to register with, read back from user data text:
/// every `--node-labels=` and `--register-with-taints=` token, in order (a later label value
/// wins, as with repeated kubelet flags; taints are collected without duplicates). Base64 user
/// data (as EC2 returns it) is decoded first. Malformed entries are skipped.
pub fn parse_node_args(user_data: &str) -> (BTreeMap<String, String>, Vec<Taint>) {
    if !user_data.contains(NODE_LABELS_FLAG) && !user_data.contains(TAINTS_FLAG) {
        let compact: String = user_data.split_whitespace().collect();
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(compact.as_bytes())
            && let Ok(text) = String::from_utf8(bytes)
            && (text.contains(NODE_LABELS_FLAG) || text.contains(TAINTS_FLAG))
        {
            return parse_node_args(&text);
        }
    }
    let mut labels = BTreeMap::new();
    for value in flag_values(user_data, NODE_LABELS_FLAG) {
        for pair in value.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=')
                && !k.is_empty()
            {
                labels.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let mut taints: Vec<Taint> = Vec::new();
    for value in flag_values(user_data, TAINTS_FLAG) {
        for spec in value.split(',').filter(|p| !p.is_empty()) {
            if let Some(taint) = parse_taint(spec)
                && !taints.contains(&taint)
            {
                taints.push(taint);
            }
        }
    }
    (labels, taints)
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(spec: &str) -> Option<Taint> {
    let (left, effect) = spec.rsplit_once(':')?;
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        _ => return None,
    };
    let (key, value) = match left.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (left, None),
    };
    if key.is_empty() {
        return None;
    }
    Some(Taint {
        key: key.to_owned(),
        value,
        effect,
    })
}

/// The value of every `flag` token in `text`: up to whitespace or a quote, or, when the value
/// itself starts with a quote (Karpenter writes `--node-labels="…"`), up to the closing quote.
fn flag_values<'a>(text: &'a str, flag: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(flag) {
        let starts_token = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '\'' || c == '"' || c == '[' || c == ',');
        let after = &rest[at + flag.len()..];
        let (value, used) = match after.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let inner = &after[1..];
                let end = inner.find(quote).unwrap_or(inner.len());
                (&inner[..end], 1 + end)
            }
            _ => {
                let end = after
                    .find(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '\\')
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if starts_token {
            values.push(value);
        }
        rest = &after[used..];
    }
    values
}

/// Labels and taints must survive as one flag token: no whitespace, quotes, backslashes, and no
/// `,` / `=` / `:` where they would split the list.
fn check_flag_safe(
    labels: &BTreeMap<String, String>,
    taints: &[Taint],
) -> Result<(), UserDataError> {
    let bad = |s: &str, extra: &[char]| {
        s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '\'' | '"' | '\\' | ',')
                || extra.contains(&c)
        })
    };
    for (k, v) in labels {
        if k.is_empty() || bad(k, &['=']) || bad(v, &[]) {
            return Err(UserDataError(format!(
                "node label {k:?}={v:?} cannot be passed to the kubelet's --node-labels"
            )));
        }
    }
    for t in taints {
        if t.key.is_empty() || bad(&t.key, &['=', ':']) || bad(t.value_or_empty(), &[':']) {
            return Err(UserDataError(format!(
                "taint {t} cannot be passed to the kubelet's --register-with-taints"
            )));
        }
    }
    Ok(())
}

/// The cluster CA as base64: EKS's form is kept, a PEM is encoded.
fn ca_base64(ca: &str) -> String {
    let ca = ca.trim();
    if ca.starts_with("-----BEGIN") {
        base64::engine::general_purpose::STANDARD.encode(format!("{ca}\n"))
    } else {
        ca.split_whitespace().collect()
    }
}

/// The `NodeConfig` YAML for nodeadm.
fn node_config(input: &Bootstrap<'_>) -> Result<String, UserDataError> {
    let mut cluster = Map::new();
    cluster.insert("name".into(), json!(input.cluster_name));
    if let Some(endpoint) = input.endpoint {
        cluster.insert("apiServerEndpoint".into(), json!(endpoint));
    }
    if let Some(ca) = input.ca_bundle {
        cluster.insert("certificateAuthority".into(), json!(ca_base64(ca)));
    }
    if let Some(cidr) = input.service_cidr {
        cluster.insert("cidr".into(), json!(cidr));
    }
    let mut config = match input.kubelet {
        Some(kubelet) => match serde_json::to_value(kubelet) {
            Ok(Value::Object(map)) => map,
            Ok(_) => Map::new(),
            Err(err) => return Err(UserDataError(format!("kubelet settings: {err}"))),
        },
        None => Map::new(),
    };
    if let Some(max_pods) = input.max_pods {
        config.insert("maxPods".into(), json!(max_pods));
    }
    if !input.taints.is_empty() {
        let taints: Vec<Value> = input
            .taints
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("key".into(), json!(t.key));
                if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
                    m.insert("value".into(), json!(v));
                }
                m.insert("effect".into(), json!(t.effect.as_str()));
                Value::Object(m)
            })
            .collect();
        config.insert("registerWithTaints".into(), Value::Array(taints));
    }
    let mut flags = Vec::new();
    if !input.labels.is_empty() {
        flags.push(json!(format!(
            "{NODE_LABELS_FLAG}{}",
            node_labels_value(input.labels)
        )));
    }
    if !input.taints.is_empty() {
        flags.push(json!(format!(
            "{TAINTS_FLAG}{}",
            taints_value(input.taints)
        )));
    }
    // Also in `config`; the flag is what kubelet stand-ins read.
    if let Some(max_pods) = config.get("maxPods").and_then(Value::as_i64) {
        flags.push(json!(format!("--max-pods={max_pods}")));
    }
    let mut kubelet = Map::new();
    if !config.is_empty() {
        kubelet.insert("config".into(), Value::Object(config));
    }
    if !flags.is_empty() {
        kubelet.insert("flags".into(), Value::Array(flags));
    }
    let doc = json!({
        "apiVersion": "node.eks.aws/v1alpha1",
        "kind": "NodeConfig",
        "spec": {
            "cluster": Value::Object(cluster),
            "kubelet": Value::Object(kubelet),
        }
    });
    let yaml = serde_yaml::to_string(&doc)
        .map_err(|err| UserDataError(format!("serializing the NodeConfig: {err}")))?;
    Ok(format!("# nodewright generated NodeConfig\n{yaml}"))
}

/// Single-quotes `s` for bash.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The AL2 bootstrap script.
fn bootstrap_sh(input: &Bootstrap<'_>) -> String {
    let mut script = String::from(
        "#!/bin/bash -xe\nexec > >(tee /var/log/user-data.log|logger -t user-data -s 2>/dev/console) 2>&1\n",
    );
    let _ = write!(
        script,
        "/etc/eks/bootstrap.sh {}",
        sh_quote(input.cluster_name)
    );
    if let Some(endpoint) = input.endpoint {
        let _ = write!(script, " --apiserver-endpoint {}", sh_quote(endpoint));
    }
    if let Some(ca) = input.ca_bundle {
        let _ = write!(script, " --b64-cluster-ca {}", sh_quote(&ca_base64(ca)));
    }
    let kubelet = input.kubelet;
    if let Some(dns) = kubelet.and_then(|k| k.cluster_dns.first()) {
        let _ = write!(script, " \\\n--dns-cluster-ip {}", sh_quote(dns));
    }
    let max_pods = input
        .max_pods
        .or_else(|| kubelet.and_then(|k| k.max_pods).map(i64::from));
    if max_pods.is_some() {
        script.push_str(" \\\n--use-max-pods false");
    }
    let mut args = Vec::new();
    if !input.labels.is_empty() {
        args.push(format!(
            "{NODE_LABELS_FLAG}{}",
            node_labels_value(input.labels)
        ));
    }
    if !input.taints.is_empty() {
        args.push(format!("{TAINTS_FLAG}{}", taints_value(input.taints)));
    }
    if let Some(max_pods) = max_pods {
        args.push(format!("--max-pods={max_pods}"));
    }
    if let Some(k) = kubelet {
        let map = |m: &BTreeMap<String, String>, sep: &str| {
            m.iter()
                .map(|(k, v)| format!("{k}{sep}{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let quantities =
            |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.0))
                    .collect::<Vec<_>>()
                    .join(",")
            };
        if let Some(ppc) = k.pods_per_core {
            args.push(format!("--pods-per-core={ppc}"));
        }
        if !k.system_reserved.is_empty() {
            args.push(format!(
                "--system-reserved={}",
                quantities(&k.system_reserved)
            ));
        }
        if !k.kube_reserved.is_empty() {
            args.push(format!("--kube-reserved={}", quantities(&k.kube_reserved)));
        }
        if !k.eviction_hard.is_empty() {
            args.push(format!("--eviction-hard={}", map(&k.eviction_hard, "<")));
        }
        if !k.eviction_soft.is_empty() {
            args.push(format!("--eviction-soft={}", map(&k.eviction_soft, "<")));
        }
        if !k.eviction_soft_grace_period.is_empty() {
            let periods: BTreeMap<String, String> = k
                .eviction_soft_grace_period
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            args.push(format!(
                "--eviction-soft-grace-period={}",
                map(&periods, "=")
            ));
        }
        if let Some(v) = k.eviction_max_pod_grace_period {
            args.push(format!("--eviction-max-pod-grace-period={v}"));
        }
        if let Some(v) = k.image_gc_high_threshold_percent {
            args.push(format!("--image-gc-high-threshold={v}"));
        }
        if let Some(v) = k.image_gc_low_threshold_percent {
            args.push(format!("--image-gc-low-threshold={v}"));
        }
        if let Some(v) = k.cpu_cfs_quota {
            args.push(format!("--cpu-cfs-quota={v}"));
        }
    }
    if !args.is_empty() {
        let _ = write!(
            script,
            " \\\n--kubelet-extra-args {}",
            sh_quote(&args.join(" "))
        );
    }
    script.push('\n');
    script
}

/// One part of a MIME multi-part document: its header lines and body.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Part {
    headers: Vec<String>,
    body: String,
}

impl Part {
    fn new(content_type: &str, body: String) -> Self {
        Self {
            headers: vec![format!("Content-Type: {content_type}")],
            body,
        }
    }
}

/// The EC2NodeClass's `userData` as parts: a MIME document's own parts; for AL2023 a YAML
/// mapping is a NodeConfig; anything else a shell script.
fn custom_parts(custom: Option<&str>, nodeadm: bool) -> Result<Vec<Part>, UserDataError> {
    let Some(custom) = custom.filter(|c| !c.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let trimmed = custom.trim_start();
    if trimmed.starts_with("MIME-Version:") || trimmed.starts_with("Content-Type:") {
        return parse_mime(custom)
            .map_err(|e| UserDataError(format!("EC2NodeClass userData: {e}")));
    }
    let is_mapping = nodeadm && serde_yaml::from_str::<serde_yaml::Mapping>(custom).is_ok();
    let content_type = if is_mapping {
        CONTENT_TYPE_NODECONFIG
    } else {
        CONTENT_TYPE_SHELL
    };
    Ok(vec![Part::new(content_type, custom.to_owned())])
}

/// Splits a MIME multi-part document into its parts.
fn parse_mime(text: &str) -> Result<Vec<Part>, String> {
    let text = text.replace("\r\n", "\n");
    let (head, body) = text
        .split_once("\n\n")
        .ok_or("a MIME document needs a blank line after its headers")?;
    let content_type = unfold(head)
        .into_iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .ok_or("no Content-Type header")?;
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return Err(format!("Content-Type {content_type} is not multipart"));
    }
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
        .ok_or("multipart Content-Type without a boundary")?;
    let delimiter = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    let mut closed = false;
    for line in body.split('\n') {
        let bare = line.trim_end();
        if bare == close || bare == delimiter {
            if let Some(lines) = current.take() {
                parts.push(part_of(&lines)?);
            }
            if bare == close {
                closed = true;
                break;
            }
            current = Some(Vec::new());
        } else if let Some(lines) = current.as_mut() {
            lines.push(line);
        }
    }
    if !closed {
        return Err(format!("the document does not end with {close}"));
    }
    Ok(parts)
}

/// One part from its lines (headers, blank line, body).
fn part_of(lines: &[&str]) -> Result<Part, String> {
    let split = lines
        .iter()
        .position(|l| l.trim().is_empty())
        .unwrap_or(lines.len());
    let headers = unfold(&lines[..split].join("\n"));
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-type:"))
    {
        return Err("a part has no Content-Type header".into());
    }
    let body = lines.get(split + 1..).unwrap_or_default().join("\n");
    Ok(Part { headers, body })
}

/// Header lines with folded continuations joined.
fn unfold(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t'])
            && let Some(last) = out.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim());
        } else if !line.trim().is_empty() {
            out.push(line.to_owned());
        }
    }
    out
}

/// A MIME multi-part document of `parts`, with Karpenter's `//` boundary unless a part holds it.
fn mime(parts: &[Part]) -> String {
    let mut boundary = BOUNDARY.to_owned();
    let mut n = 0;
    while parts.iter().any(|p| {
        p.body
            .lines()
            .any(|l| l.starts_with(&format!("--{boundary}")))
    }) {
        n += 1;
        boundary = format!("//nodewright-{n}");
    }
    let mut out =
        format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\n\n");
    for part in parts {
        let _ = write!(
            out,
            "--{boundary}\n{}\n\n{}",
            part.headers.join("\n"),
            part.body
        );
        if !part.body.ends_with('\n') {
            out.push('\n');
        }
    }
    let _ = writeln!(out, "--{boundary}--");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [
            ("karpenter.sh/nodepool", "default"),
            ("karpenter.sh/capacity-type", "spot"),
            ("nodewright.io/nodeclaim", "default-abc12"),
            ("team", "riker"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn taints() -> Vec<Taint> {
        vec![
            Taint {
                key: "nodewright.io/pool".into(),
                value: Some("default".into()),
                effect: TaintEffect::NoSchedule,
            },
            Taint {
                key: "dedicated".into(),
                value: None,
                effect: TaintEffect::NoExecute,
            },
        ]
    }

    fn input<'a>(
        family: AmiFamily,
        labels: &'a BTreeMap<String, String>,
        taints: &'a [Taint],
    ) -> Bootstrap<'a> {
        Bootstrap {
            family,
            cluster_name: "workshop",
            endpoint: Some("https://ABC.gr7.us-east-1.eks.amazonaws.com"),
            ca_bundle: Some("Y2EtYnVuZGxlCg=="),
            service_cidr: Some("10.100.0.0/16"),
            labels,
            taints,
            max_pods: Some(110),
            kubelet: None,
            custom: None,
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect,
        }
    }

    #[test]
    fn registration_taints_keep_one_taint_per_key_and_effect() {
        use TaintEffect::*;
        let pool = taint("dedicated", Some("web"), NoSchedule);
        let startup = taint("example.com/agent-not-ready", None, NoExecute);
        let unregistered = taint("nodewright.io/unregistered", None, NoExecute);
        // (case, the lists, the taints registered)
        type Case = (&'static str, Vec<Vec<Taint>>, Vec<Taint>);
        let cases: Vec<Case> = vec![
            ("none", vec![vec![], vec![]], vec![]),
            (
                "pool, startup, unregistered in order",
                vec![
                    vec![pool.clone()],
                    vec![startup.clone()],
                    vec![unregistered.clone()],
                ],
                vec![pool.clone(), startup.clone(), unregistered.clone()],
            ),
            (
                "a startup taint repeating a pool taint's key and effect",
                vec![
                    vec![pool.clone()],
                    vec![taint("dedicated", Some("other"), NoSchedule)],
                ],
                vec![pool.clone()],
            ),
            (
                "same key, another effect",
                vec![
                    vec![pool.clone()],
                    vec![taint("dedicated", None, NoExecute)],
                ],
                vec![pool.clone(), taint("dedicated", None, NoExecute)],
            ),
        ];
        for (name, lists, expected) in cases {
            let lists: Vec<&[Taint]> = lists.iter().map(Vec::as_slice).collect();
            assert_eq!(registration_taints(&lists), expected, "{name}");
        }
    }

    #[test]
    fn startup_taints_are_registered_by_every_generated_family() {
        let labels = labels();
        let startup = [taint(
            "example.com/agent-not-ready",
            None,
            TaintEffect::NoExecute,
        )];
        let taints = registration_taints(&[&taints(), &startup]);
        // (family, text that must be there, or None when the family leaves taints to the user)
        let cases = [
            (
                AmiFamily::AL2023,
                Some(
                    "--register-with-taints=nodewright.io/pool=default:NoSchedule,dedicated:NoExecute,example.com/agent-not-ready:NoExecute",
                ),
            ),
            (
                AmiFamily::AL2,
                Some(
                    "--register-with-taints=nodewright.io/pool=default:NoSchedule,dedicated:NoExecute,example.com/agent-not-ready:NoExecute --max-pods=110",
                ),
            ),
            (AmiFamily::Custom, None),
        ];
        for (family, expected) in cases {
            let text = render(&input(family, &labels, &taints)).unwrap();
            match expected {
                Some(flag) => {
                    assert!(text.contains(flag), "{family:?}: {text}");
                    assert_eq!(parse_node_args(&text).1, taints, "{family:?}");
                }
                None => assert!(!text.contains("agent-not-ready"), "{family:?}: {text}"),
            }
        }
        // nodeadm's own list as well, beside the flag.
        let text = render(&input(AmiFamily::AL2023, &labels, &taints)).unwrap();
        let yaml = text
            .split("Content-Type: application/node.eks.aws\n\n")
            .nth(1)
            .and_then(|rest| rest.split("\n--//").next())
            .unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let listed = &doc["spec"]["kubelet"]["config"]["registerWithTaints"][2];
        assert_eq!(listed["key"], "example.com/agent-not-ready", "{text}");
        assert_eq!(listed["effect"], "NoExecute", "{text}");
    }

    #[test]
    fn al2023_is_a_mime_nodeconfig_with_flags_and_register_with_taints() {
        let (labels, taints) = (labels(), taints());
        let text = render(&input(AmiFamily::AL2023, &labels, &taints)).unwrap();
        assert!(text.starts_with("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"//\"\n\n--//\nContent-Type: application/node.eks.aws\n\n"), "{text}");
        assert!(text.ends_with("--//--\n"), "{text}");
        assert!(text.contains("--node-labels=karpenter.sh/capacity-type=spot,karpenter.sh/nodepool=default,nodewright.io/nodeclaim=default-abc12,team=riker"), "{text}");
        assert!(
            text.contains(
                "--register-with-taints=nodewright.io/pool=default:NoSchedule,dedicated:NoExecute"
            ),
            "{text}"
        );
        // The NodeConfig part is valid YAML with the cluster and kubelet settings.
        let yaml = text
            .split("Content-Type: application/node.eks.aws\n\n")
            .nth(1)
            .unwrap()
            .split("\n--//")
            .next()
            .unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(doc["kind"], "NodeConfig");
        assert_eq!(doc["spec"]["cluster"]["name"], "workshop");
        assert_eq!(
            doc["spec"]["cluster"]["certificateAuthority"],
            "Y2EtYnVuZGxlCg=="
        );
        assert_eq!(doc["spec"]["cluster"]["cidr"], "10.100.0.0/16");
        assert_eq!(doc["spec"]["kubelet"]["config"]["maxPods"], 110);
        assert_eq!(doc["spec"]["kubelet"]["flags"][2], "--max-pods=110");
        let rwt = &doc["spec"]["kubelet"]["config"]["registerWithTaints"];
        assert_eq!(rwt[0]["key"], "nodewright.io/pool");
        assert_eq!(rwt[0]["value"], "default");
        assert_eq!(rwt[1]["effect"], "NoExecute");
        assert!(rwt[1].get("value").is_none());

        let (l, t) = parse_node_args(&text);
        assert_eq!(l, labels);
        assert_eq!(t, taints);
    }

    #[test]
    fn al2_calls_bootstrap_sh_with_kubelet_extra_args() {
        let (labels, taints) = (labels(), taints());
        let kubelet = KubeletConfiguration {
            cluster_dns: vec!["10.100.0.10".into()],
            eviction_hard: [("memory.available".to_owned(), "5%".to_owned())].into(),
            ..Default::default()
        };
        let mut i = input(AmiFamily::AL2, &labels, &taints);
        i.kubelet = Some(&kubelet);
        let text = render(&i).unwrap();
        assert!(text.contains("/etc/eks/bootstrap.sh 'workshop' --apiserver-endpoint 'https://ABC.gr7.us-east-1.eks.amazonaws.com' --b64-cluster-ca 'Y2EtYnVuZGxlCg=='"), "{text}");
        assert!(text.contains("--dns-cluster-ip '10.100.0.10'"), "{text}");
        assert!(text.contains("--use-max-pods false"), "{text}");
        assert!(
            text.contains("--kubelet-extra-args '--node-labels=karpenter.sh/capacity-type=spot,"),
            "{text}"
        );
        assert!(
            text.contains(" --max-pods=110 --eviction-hard=memory.available<5%'"),
            "{text}"
        );
        let (l, t) = parse_node_args(&text);
        assert_eq!(l, labels);
        assert_eq!(t, taints);
    }

    #[test]
    fn custom_user_data_is_merged_before_the_generated_part() {
        let (labels, taints) = (labels(), taints());
        // A shell script becomes a shell part.
        let mut i = input(AmiFamily::AL2023, &labels, &taints);
        i.custom = Some("#!/bin/bash\necho hello\n");
        let text = render(&i).unwrap();
        let shell = text.find("Content-Type: text/x-shellscript").unwrap();
        let nodeconfig = text.find("Content-Type: application/node.eks.aws").unwrap();
        assert!(shell < nodeconfig, "{text}");
        assert!(text.contains("echo hello"), "{text}");

        // A NodeConfig YAML becomes another NodeConfig part.
        i.custom = Some(
            "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    config:\n      shutdownGracePeriod: 30s\n",
        );
        let text = render(&i).unwrap();
        assert_eq!(
            text.matches("Content-Type: application/node.eks.aws")
                .count(),
            2,
            "{text}"
        );

        // A MIME document contributes its parts, headers kept.
        i.custom = Some(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\n--BOUNDARY\r\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\r\n\r\n#!/bin/bash\r\necho one\r\n--BOUNDARY\r\nContent-Type: text/cloud-config\r\n\r\nruncmd: []\r\n--BOUNDARY--\r\n",
        );
        let text = render(&i).unwrap();
        assert!(
            text.contains("Content-Type: text/cloud-config\n\nruncmd: []\n"),
            "{text}"
        );
        assert!(text.contains("#!/bin/bash\necho one\n--//\n"), "{text}");
        assert_eq!(parse_mime(&text).unwrap().len(), 3);

        // A broken MIME document is an error that says so.
        i.custom = Some(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nno end\n",
        );
        let err = render(&i).unwrap_err();
        assert!(err.0.contains("userData"), "{err}");
    }

    #[test]
    fn a_part_holding_the_boundary_gets_another_boundary() {
        let (labels, taints) = (labels(), taints());
        let mut i = input(AmiFamily::AL2023, &labels, &taints);
        i.custom = Some("#!/bin/bash\necho '--//'\n--//\n");
        let text = render(&i).unwrap();
        assert!(text.contains("boundary=\"//nodewright-1\""), "{text}");
        assert_eq!(parse_mime(&text).unwrap().len(), 2);
    }

    #[test]
    fn custom_family_passes_user_data_through_and_others_are_refused() {
        let (labels, taints) = (labels(), taints());
        let mut i = input(AmiFamily::Custom, &labels, &taints);
        i.custom = Some("#!/bin/bash\n/opt/join.sh\n");
        assert_eq!(render(&i).unwrap(), "#!/bin/bash\n/opt/join.sh\n");
        let err = render(&input(AmiFamily::Bottlerocket, &labels, &taints)).unwrap_err();
        assert!(err.0.contains("Bottlerocket"), "{err}");
    }

    #[test]
    fn labels_that_would_break_the_flag_are_refused() {
        let taints = taints();
        let mut bad = labels();
        bad.insert("note".into(), "a,b".into());
        let err = render(&input(AmiFamily::AL2023, &bad, &taints)).unwrap_err();
        assert!(err.0.contains("note"), "{err}");
    }

    #[test]
    fn parses_quoted_repeated_and_base64_flags() {
        let text = "flags:\n- --node-labels=\"a=1,b=2\"\n- '--node-labels=b=3'\nx --register-with-taints=k=v:NoSchedule,bad,k2:NoExecute --max-pods=3\nnot--node-labels=z=9\n";
        let (labels, taints) = parse_node_args(text);
        assert_eq!(
            labels,
            BTreeMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "3".to_owned())
            ])
        );
        assert_eq!(taints.len(), 2);
        assert_eq!(taints[0].to_string(), "k=v:NoSchedule");
        assert_eq!(taints[1].to_string(), "k2:NoExecute");

        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        assert_eq!(parse_node_args(&encoded), (labels, taints));
        assert_eq!(
            parse_node_args("#!/bin/bash\n"),
            (BTreeMap::new(), Vec::new())
        );
    }

    #[test]
    fn a_pem_ca_is_encoded() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let encoded = ca_base64(pem);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&encoded)
            .unwrap();
        assert!(
            String::from_utf8(decoded)
                .unwrap()
                .starts_with("-----BEGIN")
        );
        assert_eq!(ca_base64("Y2E=\n"), "Y2E=");
    }
}
