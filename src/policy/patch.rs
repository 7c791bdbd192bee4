//! RFC 6902 operations for the webhook's patches, built for the object exactly as the apiserver
//! sent it: every `add` targets either a parent that exists or the missing map or list itself,
//! never a key under an absent parent (which would fail the whole request).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Map, Value};

/// `add` at the path made of `tokens` (escaped as JSON pointer tokens).
pub fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// Add `entries` to the map at `map` (tokens): one `add` per key when the map exists, else the
/// whole map at once.
pub fn add_entries(map: &[&str], exists: bool, entries: Vec<(&str, Value)>) -> Vec<PatchOperation> {
    if entries.is_empty() {
        return Vec::new();
    }
    if exists {
        entries
            .into_iter()
            .map(|(key, value)| {
                let mut path = map.to_vec();
                path.push(key);
                add(&path, value)
            })
            .collect()
    } else {
        let whole: Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        vec![add(map, Value::Object(whole))]
    }
}

/// Append items to `/spec/<field>`: one `add .../-` each when the list exists, else the whole list.
pub fn append<T: serde::Serialize>(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    exists: bool,
    items: Vec<T>,
) {
    if items.is_empty() {
        return;
    }
    let values = items
        .into_iter()
        .filter_map(|i| serde_json::to_value(i).ok());
    if exists {
        ops.extend(values.map(|v| add(&["spec", field, "-"], v)));
    } else {
        ops.push(add(&["spec", field], Value::Array(values.collect())));
    }
}
