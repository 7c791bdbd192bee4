//! Writing the extender's answers: the same bytes serde_json would give for the wire types, without
//! its per-byte escaping pass (5,000 node names cost more to escape than to decide on).

use serde_json::value::RawValue;

use super::wire::{ExtenderCall, ExtenderFilterResult, NodeList, NodeMessages, NodesIn, Str};
use crate::scheduling::extender::{FilterDecision, Refusal};

fn empty_object() -> &'static RawValue {
    serde_json::from_str("{}").expect("{} is JSON")
}

/// Appends `s` as a JSON string, exactly as serde_json writes it. Node names and messages almost
/// never need escaping and are copied as they are: a byte-by-byte escaping pass over 5,000 names
/// costs more than deciding on them.
fn push_str(out: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises to a Vec");
    }
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_raw(out: &mut Vec<u8>, raw: Option<&RawValue>) {
    out.extend_from_slice(raw.map_or("null", RawValue::get).as_bytes());
}

fn push_messages(out: &mut Vec<u8>, messages: Option<&NodeMessages<'_>>) {
    let Some(NodeMessages(entries)) = messages else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (node, message)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, node);
        out.push(b':');
        push_str(out, message);
    }
    out.push(b'}');
}

impl ExtenderFilterResult<'_> {
    /// The same bytes as `serde_json::to_vec(self)`, written without serde's per-byte escaping.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"Nodes\":");
        match &self.nodes {
            None => out.extend_from_slice(b"null"),
            Some(list) => {
                out.extend_from_slice(b"{\"metadata\":");
                push_raw(out, list.metadata);
                out.extend_from_slice(b",\"items\":");
                match &list.items {
                    None => out.extend_from_slice(b"null"),
                    Some(items) => {
                        out.push(b'[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            push_raw(out, Some(item));
                        }
                        out.push(b']');
                    }
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"NodeNames\":");
        match &self.node_names {
            None => out.extend_from_slice(b"null"),
            Some(names) => {
                out.push(b'[');
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_str(out, name);
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"FailedNodes\":");
        push_messages(out, self.failed_nodes.as_ref());
        out.extend_from_slice(b",\"FailedAndUnresolvableNodes\":");
        push_messages(out, self.failed_and_unresolvable_nodes.as_ref());
        out.extend_from_slice(b",\"Error\":");
        push_str(out, &self.error);
        out.push(b'}');
    }

    /// [`ExtenderFilterResult::write_json`] into a new buffer.
    pub fn to_json(&self) -> Vec<u8> {
        let names: usize = self.node_names.iter().flatten().map(|n| n.len() + 3).sum();
        let items: usize = self
            .nodes
            .iter()
            .flat_map(|l| l.items.iter().flatten())
            .map(|i| i.get().len() + 1)
            .sum();
        let messages: usize = [&self.failed_nodes, &self.failed_and_unresolvable_nodes]
            .into_iter()
            .flatten()
            .flat_map(|m| &m.0)
            .map(|(n, m)| n.len() + m.len() + 6)
            .sum();
        let mut out = Vec::with_capacity(128 + names + items + messages + self.error.len());
        self.write_json(&mut out);
        out
    }
}

/// The filter's `ExtenderFilterResult`, answering in the form the nodes came in: `NodeNames` (a
/// subset of the input, in its order) with `Nodes: null`, or `Nodes` holding the passing objects
/// exactly as sent with `NodeNames: null`. `FailedNodes` is always an object,
/// `FailedAndUnresolvableNodes` `null` when empty.
pub fn filter_result<'c>(
    call: &'c ExtenderCall<'_>,
    decision: &'c FilterDecision,
) -> ExtenderFilterResult<'c> {
    let name_of = |i: usize| -> &'c str {
        match &call.nodes {
            NodesIn::Names(n) => &n[i],
            NodesIn::Objects { items, .. } => &items[i].name,
        }
    };
    let mut failed = Vec::with_capacity(decision.refused.len());
    let mut unresolvable = Vec::new();
    for (i, refusal) in &decision.refused {
        let name = Str::borrowed(name_of(*i));
        match refusal {
            Refusal::Reserved(m) => failed.push((name, Str::borrowed(m))),
            Refusal::Closing(m) => {
                failed.push((name.clone(), Str::borrowed(m)));
                unresolvable.push((name, Str::borrowed(m)));
            }
        }
    }
    failed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    unresolvable.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let (nodes, node_names) = match &call.nodes {
        NodesIn::Names(n) => (
            None,
            Some(
                decision
                    .passing
                    .iter()
                    .map(|&i| Str::borrowed(&n[i]))
                    .collect(),
            ),
        ),
        NodesIn::Objects { metadata, items } => (
            Some(NodeList {
                metadata: Some(match metadata {
                    Some(m) => m,
                    None => empty_object(),
                }),
                items: Some(decision.passing.iter().map(|&i| items[i].raw).collect()),
            }),
            None,
        ),
    };
    ExtenderFilterResult {
        nodes,
        node_names,
        failed_nodes: Some(NodeMessages(failed)),
        failed_and_unresolvable_nodes: (!unresolvable.is_empty())
            .then_some(NodeMessages(unresolvable)),
        error: String::new(),
    }
}

/// [`filter_result`] as JSON bytes.
pub fn encode_filter(call: &ExtenderCall<'_>, decision: &FilterDecision) -> Vec<u8> {
    filter_result(call, decision).to_json()
}

/// An `ExtenderFilterResult` carrying only an error (every other field `null`).
pub fn encode_filter_error(message: &str) -> Vec<u8> {
    ExtenderFilterResult {
        error: message.to_owned(),
        ..ExtenderFilterResult::default()
    }
    .to_json()
}

/// Writes a `HostPriorityList`: the same bytes as serde_json gives for `[HostPriority]`.
pub fn write_priorities<'h>(out: &mut Vec<u8>, list: impl IntoIterator<Item = (&'h str, i64)>) {
    out.push(b'[');
    for (i, (host, score)) in list.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Host\":");
        push_str(out, host);
        out.extend_from_slice(b",\"Score\":");
        push_i64(out, score);
        out.push(b'}');
    }
    out.push(b']');
}

/// The `HostPriorityList` for `scores` (one per node asked about, in order).
pub fn encode_priorities(call: &ExtenderCall<'_>, scores: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + scores.len() * 24);
    match &call.nodes {
        NodesIn::Names(n) => {
            out.reserve(n.iter().map(|h| h.len()).sum());
            write_priorities(&mut out, n.iter().map(|h| &**h).zip(scores.iter().copied()));
        }
        NodesIn::Objects { items, .. } => write_priorities(
            &mut out,
            items.iter().map(|i| &*i.name).zip(scores.iter().copied()),
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extender::wire::HostPriority;
    use crate::scheduling::view::{ClusterView, NodeFacts, NodeState};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn filter_result_keeps_order_and_lists_closing_nodes_in_both_maps() {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("b"),
            NodeFacts {
                state: NodeState::Terminating,
                ..NodeFacts::default()
            },
        );
        let body = br#"{"Pod":{"metadata":{"name":"p"}},"NodeNames":["c","b","a"]}"#;
        let call = ExtenderCall::decode(body).unwrap();
        let decision = call.filter(&view, Instant::now());
        let json = String::from_utf8(encode_filter(&call, &decision)).unwrap();
        assert_eq!(
            json,
            r#"{"Nodes":null,"NodeNames":["c","a"],"FailedNodes":{"b":"node is being terminated by nodewright"},"FailedAndUnresolvableNodes":{"b":"node is being terminated by nodewright"},"Error":""}"#
        );
    }

    #[test]
    fn hand_written_json_matches_serde_json_byte_for_byte() {
        let golden = r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename"},"spec":{}}]},"NodeNames":["node1"],"FailedNodes":{"foo":"bar"},"FailedAndUnresolvableNodes":{"baz":"qux"},"Error":"myerror"}"#;
        let tricky = "quote \" backslash \\ tab \t nul \u{0} del \u{7f} é ✓";
        let results = [
            serde_json::from_str::<ExtenderFilterResult<'_>>(golden).unwrap(),
            ExtenderFilterResult::default(),
            ExtenderFilterResult {
                nodes: Some(NodeList::default()),
                node_names: Some(vec![Str::borrowed(tricky), Str::borrowed("")]),
                failed_nodes: Some(NodeMessages(vec![(
                    Str::borrowed("a\nb"),
                    Str::borrowed(tricky),
                )])),
                failed_and_unresolvable_nodes: Some(NodeMessages::default()),
                error: tricky.to_owned(),
            },
        ];
        for r in &results {
            assert_eq!(
                String::from_utf8(r.to_json()).unwrap(),
                serde_json::to_string(r).unwrap()
            );
        }
        let list = [(tricky, 0), ("n", 10), ("m", -7), ("big", i64::MIN)];
        let mut ours = Vec::new();
        write_priorities(&mut ours, list.iter().copied());
        let theirs: Vec<HostPriority<'_>> = list
            .iter()
            .map(|&(h, score)| HostPriority {
                host: Str::borrowed(h),
                score,
            })
            .collect();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
    }
}
