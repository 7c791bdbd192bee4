//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and field selectors
//! (`=`, `==`, `!=` on the fields the apiserver supports per kind).

use crate::util::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, ApiError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse requirement: unbalanced ')' in {s:?}"
                    )));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: unbalanced '(' in {s:?}"
        )));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: expected a set in {whole:?}"
            ))
        })?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if vals.iter().any(|v| !valid_value(v)) {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: invalid value in {whole:?}"
        )));
    }
    Ok(vals)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top(s)? {
            let p = part.trim();
            let bad = || ApiError::bad_request(format!("unable to parse requirement: {p:?}"));
            let req = if let Some(k) = p.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_string(), parse_set(rest, p)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                LabelReq::In(k.trim().to_string(), parse_set(rest, p)?)
            } else if !p.contains(' ') && !p.contains('(') {
                LabelReq::Exists(p.to_string())
            } else {
                return Err(bad());
            };
            let (key, vals): (&str, Vec<&str>) = match &req {
                LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => (k, vec![v.as_str()]),
                LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) || vals.iter().any(|v| !valid_value(v)) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>); // (field, equal?, value)

/// The fields a kind can be selected on, as kube-apiserver registers them, with where they
/// sit in the object. `metadata.name` and `metadata.namespace` work for every kind.
fn field_path(group: &str, plural: &str, field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => return Some("/metadata/name"),
        "metadata.namespace" => return Some("/metadata/namespace"),
        _ => {}
    }
    match (group, plural, field) {
        ("", "pods", "spec.nodeName") => Some("/spec/nodeName"),
        ("", "pods", "spec.restartPolicy") => Some("/spec/restartPolicy"),
        ("", "pods", "spec.schedulerName") => Some("/spec/schedulerName"),
        ("", "pods", "spec.serviceAccountName") => Some("/spec/serviceAccountName"),
        ("", "pods", "spec.hostNetwork") => Some("/spec/hostNetwork"),
        ("", "pods", "status.phase") => Some("/status/phase"),
        ("", "pods", "status.podIP") => Some("/status/podIP"),
        ("", "pods", "status.nominatedNodeName") => Some("/status/nominatedNodeName"),
        ("", "nodes", "spec.unschedulable") => Some("/spec/unschedulable"),
        ("", "namespaces", "status.phase") => Some("/status/phase"),
        ("", "events", "involvedObject.kind") => Some("/involvedObject/kind"),
        ("", "events", "involvedObject.namespace") => Some("/involvedObject/namespace"),
        ("", "events", "involvedObject.name") => Some("/involvedObject/name"),
        ("", "events", "involvedObject.uid") => Some("/involvedObject/uid"),
        ("", "events", "involvedObject.apiVersion") => Some("/involvedObject/apiVersion"),
        ("", "events", "involvedObject.resourceVersion") => Some("/involvedObject/resourceVersion"),
        ("", "events", "involvedObject.fieldPath") => Some("/involvedObject/fieldPath"),
        ("", "events", "reason") => Some("/reason"),
        ("", "events", "reportingComponent") => Some("/reportingComponent"),
        ("", "events", "source") => Some("/source/component"),
        ("", "events", "type") => Some("/type"),
        _ => None,
    }
}

impl FieldSelector {
    pub fn parse(s: &str, group: &str, plural: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (f, eq, v) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            let f = f.trim();
            if field_path(group, plural, f).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
            reqs.push((f.to_string(), eq, v.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, group: &str, plural: &str, obj: &Value) -> bool {
        self.0.iter().all(|(f, eq, want)| {
            let have = match field_path(group, plural, f).and_then(|p| obj.pointer(p)) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Null) | None
                    if f == "spec.hostNetwork" || f == "spec.unschedulable" =>
                {
                    "false".into()
                }
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&o));
        assert_eq!(m("app=web").ok(), Some(true));
        assert_eq!(m("app==web,tier=front").ok(), Some(true));
        assert_eq!(m("app!=web").ok(), Some(false));
        assert_eq!(m("missing!=x").ok(), Some(true));
        assert_eq!(m("app in (db, web)").ok(), Some(true));
        assert_eq!(m("app notin (db,web)").ok(), Some(false));
        assert_eq!(m("missing notin (a)").ok(), Some(true));
        assert_eq!(m("tier,!missing").ok(), Some(true));
        assert_eq!(m("!app").ok(), Some(false));
        assert_eq!(m("").ok(), Some(true));
        assert!(m("app in (a").is_err());
        assert!(m("a b c").is_err());
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s, "", "pods").map(|f| f.matches("", "pods", &pod));
        assert_eq!(m("spec.nodeName=").ok(), Some(true));
        assert_eq!(m("spec.nodeName!=").ok(), Some(false));
        assert_eq!(m("status.phase=Running,metadata.name==p").ok(), Some(true));
        assert_eq!(m("status.phase!=Running").ok(), Some(false));
        assert!(m("spec.foo=x").is_err());
        assert!(FieldSelector::parse("spec.nodeName=x", "", "configmaps").is_err());
    }
}
