//! Startup taints (a NodePool's `spec.template.spec.startupTaints`): the kubelet registers the
//! node with them (the user data, [`crate::cloud::userdata`]), a daemon on the node removes them
//! once it is ready, and nodewright neither adds them back nor removes them.
//!
//! Until they are gone the node is not initialized (Karpenter's `StartupTaintsRemoved`), and, as
//! Karpenter's cluster state does, the planner reads such a node without them: the pods it was
//! launched for wait for it instead of getting yet another node. A node is initialized once it
//! has been seen without any of its pool's startup taints; a startup taint that comes back later
//! counts like any other taint. The notion lives in memory: after a restart, a node that carries
//! a startup taint of its pool is read as not initialized again.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Node;

use crate::config::Config;
use crate::model::catalog::labels;
use crate::model::taints::Taint;
use crate::scheduling::solver::ExistingNode;

/// Which pool nodes are initialized, by node name.
#[derive(Debug, Default)]
pub struct Initialization {
    initialized: HashSet<String>,
}

impl Initialization {
    /// Record a Node as the watch sees it.
    pub fn observe(&mut self, node: &Node, config: &Config) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        if self.initialized.contains(name) {
            return;
        }
        let startup = startup_taints(config, node.metadata.labels.as_ref());
        let carries = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|taints| {
                taints.iter().any(|t| {
                    startup
                        .iter()
                        .any(|s| s.key == t.key && s.effect.as_str() == t.effect)
                })
            });
        if !carries {
            self.initialized.insert(name.to_owned());
        }
    }

    /// Whether the node is past its startup taints (as last observed).
    pub fn is_initialized(&self, name: &str) -> bool {
        self.initialized.contains(name)
    }

    /// Forget a deleted Node.
    pub fn forget(&mut self, name: &str) {
        self.initialized.remove(name);
    }

    /// The planner's view of `nodes`: the pool's startup taints left out on nodes not yet
    /// initialized.
    pub fn relax(&self, nodes: &mut [ExistingNode], config: &Config) {
        for node in nodes {
            if self.initialized.contains(&node.name) {
                continue;
            }
            let startup = startup_taints(config, Some(&node.labels));
            node.taints.retain(|t| {
                !startup
                    .iter()
                    .any(|s| s.key == t.key && s.effect == t.effect)
            });
        }
    }
}

/// The startup taints of the pool a node with these labels belongs to.
fn startup_taints<'c>(
    config: &'c Config,
    node_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> &'c [Taint] {
    node_labels
        .and_then(|l| l.get(labels::NODEPOOL))
        .and_then(|pool| config.node_pools.get(pool))
        .map_or(&[], |p| p.spec.template.spec.startup_taints.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::taints::TaintEffect;
    use serde_json::json;

    const CONFIG: &str = r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: default}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      taints:
        - {key: dedicated, value: web, effect: NoSchedule}
      startupTaints:
        - {key: example.com/agent-not-ready, effect: NoExecute}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: default}
spec:
  amiSelectorTerms: [{alias: al2023@latest}]
  role: NodeRole
  subnetSelectorTerms: [{tags: {karpenter.sh/discovery: c}}]
  securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: c}}]
"#;

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect,
        }
    }

    fn node(name: &str, pool: Option<&str>, taints: Vec<Taint>) -> Node {
        let labels = pool.map(|p| json!({"karpenter.sh/nodepool": p}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn existing(node: &Node) -> ExistingNode {
        ExistingNode {
            name: node.metadata.name.clone().unwrap(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(|t| serde_json::from_value(serde_json::to_value(t).unwrap()).unwrap())
                .collect(),
            allocatable: Default::default(),
            requested: Default::default(),
            pods: Vec::new(),
            in_flight: false,
        }
    }

    /// The taint keys the planner sees on `node` after the nodes in `seen` were observed in order.
    fn planned_keys(seen: &[Node], node: &Node) -> Vec<String> {
        let config = Config::parse(CONFIG, "test.yaml").unwrap();
        let mut init = Initialization::default();
        for n in seen {
            init.observe(n, &config);
        }
        let mut nodes = [existing(node)];
        init.relax(&mut nodes, &config);
        nodes[0].taints.iter().map(|t| t.key.clone()).collect()
    }

    #[test]
    fn startup_taints_are_ignored_until_the_node_is_initialized() {
        let startup = taint("example.com/agent-not-ready", None, TaintEffect::NoExecute);
        let same_key_other_effect =
            taint("example.com/agent-not-ready", None, TaintEffect::NoSchedule);
        let pool = taint("dedicated", Some("web"), TaintEffect::NoSchedule);
        let starting = node("a", Some("default"), vec![pool.clone(), startup.clone()]);
        let ready = node("a", Some("default"), vec![pool.clone()]);
        let cases: Vec<(&str, Vec<Node>, Node, Vec<&str>)> = vec![
            (
                "registered with it",
                vec![starting.clone()],
                starting.clone(),
                vec!["dedicated"],
            ),
            (
                "never seen yet",
                vec![],
                starting.clone(),
                vec!["dedicated"],
            ),
            (
                "removed by its daemon",
                vec![starting.clone(), ready.clone()],
                ready.clone(),
                vec!["dedicated"],
            ),
            (
                "back after initialization",
                vec![starting.clone(), ready.clone(), starting.clone()],
                starting.clone(),
                vec!["dedicated", "example.com/agent-not-ready"],
            ),
            // Only key and effect name a startup taint; another effect is another taint.
            (
                "other effect",
                vec![],
                node("a", Some("default"), vec![same_key_other_effect.clone()]),
                vec!["example.com/agent-not-ready"],
            ),
            // Nodes of other pools, or of none, keep every taint.
            (
                "other pool",
                vec![],
                node("b", Some("batch"), vec![startup.clone()]),
                vec!["example.com/agent-not-ready"],
            ),
            (
                "no pool",
                vec![],
                node("c", None, vec![startup.clone()]),
                vec!["example.com/agent-not-ready"],
            ),
        ];
        for (name, seen, node, expected) in cases {
            assert_eq!(planned_keys(&seen, &node), expected, "{name}");
        }
    }

    #[test]
    fn a_deleted_node_is_forgotten() {
        let config = Config::parse(CONFIG, "test.yaml").unwrap();
        let startup = taint("example.com/agent-not-ready", None, TaintEffect::NoExecute);
        let mut init = Initialization::default();
        init.observe(&node("a", Some("default"), vec![]), &config);
        init.forget("a");
        // A new node of the same name starts uninitialized.
        let again = node("a", Some("default"), vec![startup]);
        init.observe(&again, &config);
        let mut nodes = [existing(&again)];
        init.relax(&mut nodes, &config);
        assert!(nodes[0].taints.is_empty());
    }
}
