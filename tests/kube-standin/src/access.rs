//! Who asked for what: every API request, as the request attributes kube-apiserver's authorizer
//! sees (RBAC's verb, API group, resource and subresource, namespace, name), keyed by the bearer
//! token of the kubeconfig that sent it. Tests give the process under test a kubeconfig with a
//! token of its own ([`crate::Handle::kubeconfig_for`]) and then compare what it really called with
//! the RBAC rules it ships.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, header};
use serde::Serialize;

/// One request as RBAC sees it (`k8s.io/apiserver` `RequestInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Access {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// The resource, with `/subresource` when there is one (`nodeclaims/status`, `pods/binding`).
    pub resource: String,
    /// `None` for cluster-scoped requests (and cluster-wide lists and watches).
    pub namespace: Option<String>,
    /// The object's name; for lists and watches, the `metadata.name=` of a field selector (RBAC
    /// allows those under `resourceNames`).
    pub name: Option<String>,
}

/// The request's attributes, or `None` for a non-resource request (`/version`, `/healthz`,
/// discovery documents).
pub(crate) fn attributes(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Option<Access> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, rest @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*resource];
            v.extend_from_slice(rest);
            v
        }),
        other => (None, other.to_vec()),
    };
    // `/api/v1/namespaces/NAME` (fewer than three parts) is the namespace itself.
    let (resource, name, sub) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(name.to_string()), None),
        [resource, name, sub] => (*resource, Some(name.to_string()), Some(*sub)),
        _ => return None,
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method, name.is_some()) {
        (&Method::GET | &Method::HEAD, _) if watch => "watch",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return None,
    };
    // A list or watch narrowed to one name by a field selector is authorized for that name.
    let name = name.or_else(|| {
        query
            .get("fieldSelector")
            .and_then(|f| f.split(',').find_map(|t| t.strip_prefix("metadata.name=")))
            .map(str::to_owned)
    });
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    Some(Access {
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource,
        namespace,
        name,
    })
}

/// The bearer token of a request, if any.
pub(crate) fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(method: Method, path: &str, query: &[(&str, &str)]) -> Access {
        let query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes(&method, path, &query).unwrap()
    }

    #[test]
    fn request_attributes_as_rbac_sees_them() {
        let a = at(Method::GET, "/api/v1/pods", &[("watch", "true")]);
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.namespace,
                a.name
            ),
            ("watch", "", "pods", None, None)
        );
        let a = at(Method::PUT, "/api/v1/namespaces/nw/configmaps/ledger", &[]);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.namespace.as_deref(),
                a.name.as_deref()
            ),
            ("update", "configmaps", Some("nw"), Some("ledger"))
        );
        let a = at(
            Method::PATCH,
            "/apis/nodewright.io/v1alpha1/nodeclaims/c1/status",
            &[],
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.name.as_deref()
            ),
            ("patch", "nodewright.io", "nodeclaims/status", Some("c1"))
        );
        let a = at(
            Method::GET,
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            &[
                ("watch", "1"),
                ("fieldSelector", "metadata.name=nodewright"),
            ],
        );
        assert_eq!(
            (a.verb.as_str(), a.name.as_deref()),
            ("watch", Some("nodewright"))
        );
        let a = at(Method::GET, "/api/v1/namespaces/team-riker", &[]);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.namespace,
                a.name.as_deref()
            ),
            ("get", "namespaces", None, Some("team-riker"))
        );
        let a = at(
            Method::POST,
            "/api/v1/namespaces/team-riker/pods/web/binding",
            &[],
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str()),
            ("create", "pods/binding")
        );
        assert!(attributes(&Method::GET, "/version", &HashMap::new()).is_none());
    }
}
