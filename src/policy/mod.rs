//! Pure decisions: what to do with a pod (steering) and with a quota request. No I/O here.

pub mod mutate;
pub mod patch;
pub mod pod;
pub mod quota;
pub mod selector;
pub mod split;
