//! placeholder, replaced by the manifests helper
