//! A fault-injecting EC2 query-API proxy in front of moto, on 127.0.0.1: point an SDK client at
//! [`Ec2Proxy::endpoint`] (`endpoint_url`, or `AWS_ENDPOINT_URL_EC2` in a child process).
//!
//! Knobs:
//! - **Out of capacity**: a set of (instance type, capacity type). A `CreateFleet` whose
//!   `TargetCapacitySpecification.DefaultTargetCapacityType` is that capacity type has the
//!   matching overrides removed before it reaches moto; moto's answer gets one `errorSet` item
//!   per removed override (`InsufficientInstanceCapacity`, with the override's launch template,
//!   instance type, subnet and zone, and the lifecycle), as EC2 reports per-override failures of
//!   an `instant` fleet. When no override remains the proxy answers alone: the errors and no
//!   instance.
//! - **Throttling**: the next N requests of an Action are answered `503` with EC2's
//!   `RequestLimitExceeded` error document; [`Ec2Proxy::fail`] answers any other error code.
//! - **Hold**: requests of an Action wait at the proxy until [`Ec2Proxy::release`]d, then go on
//!   to moto, or are answered `500` without reaching it (as if the client had never sent them).
//!   A request is handled to its end even when its client has gone (a killed process), so a
//!   request released after its sender died still reaches EC2, as one in flight would.
//! - **Log**: every request, in order, with its Action, arrival time, answer status and
//!   (decoded) form parameters.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct Logged {
    pub action: String,
    pub at: Instant,
    pub status: u16,
    /// The form parameters as the client sent them (before any override was removed).
    pub params: Vec<(String, String)>,
}

impl Logged {
    /// The value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter whose name matches `prefix` and `suffix`, in order.
    pub fn params_like(&self, prefix: &str, suffix: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Knobs {
    /// (instance type, capacity type as EC2 spells it: `spot`, `on-demand`)
    out_of_capacity: HashSet<(String, String)>,
    /// Action → (HTTP status, error code, answers still to fail)
    faults: HashMap<String, (u16, String, u32)>,
    log: Vec<Logged>,
    fleets: u32,
    /// Requests of each held Action waiting now.
    holding: HashMap<String, usize>,
}

/// What a held Action's requests do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Wait,
    Forward,
    Drop,
}

/// The running proxy; stops on drop.
pub struct Ec2Proxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    knobs: Arc<Mutex<Knobs>>,
    held: tokio::sync::watch::Sender<HashMap<String, Hold>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    knobs: Arc<Mutex<Knobs>>,
    /// Held Actions.
    held: tokio::sync::watch::Sender<HashMap<String, Hold>>,
}

impl Ec2Proxy {
    pub async fn start(upstream: &str) -> Ec2Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let held = tokio::sync::watch::Sender::new(HashMap::new());
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            knobs: Arc::clone(&knobs),
            held: held.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .unwrap();
        });
        Ec2Proxy {
            endpoint,
            knobs,
            held,
            stop,
        }
    }

    /// Requests of `action` wait at the proxy from now on, until [`Self::release`].
    pub fn hold(&self, action: &str) {
        self.held.send_modify(|h| {
            h.insert(action.to_owned(), Hold::Wait);
        });
    }

    /// How many requests of `action` are held now.
    pub fn holding(&self, action: &str) -> usize {
        self.knobs
            .lock()
            .unwrap()
            .holding
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// Stop holding `action`: the held requests go on to moto (`forward`), or are answered
    /// `500 InternalError` without reaching it; later ones pass as usual.
    pub fn release(&self, action: &str, forward: bool) {
        let what = if forward { Hold::Forward } else { Hold::Drop };
        self.held.send_modify(|h| {
            h.insert(action.to_owned(), what);
        });
    }

    /// CreateFleet overrides of `instance_type` are out of capacity for `capacity_type`
    /// (`spot` or `on-demand`).
    pub fn out_of_capacity(&self, instance_type: &str, capacity_type: &str) {
        self.knobs
            .lock()
            .unwrap()
            .out_of_capacity
            .insert((instance_type.to_owned(), capacity_type.to_owned()));
    }

    /// Capacity is back everywhere.
    pub fn restore_capacity(&self) {
        self.knobs.lock().unwrap().out_of_capacity.clear();
    }

    /// The next `n` requests of `action` are throttled (`503 RequestLimitExceeded`).
    pub fn throttle(&self, action: &str, n: u32) {
        self.fail(action, 503, "RequestLimitExceeded", n);
    }

    /// The next `n` requests of `action` are answered `status` with EC2 error `code`.
    pub fn fail(&self, action: &str, status: u16, code: &str, n: u32) {
        self.knobs
            .lock()
            .unwrap()
            .faults
            .insert(action.to_owned(), (status, code.to_owned(), n));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.knobs.lock().unwrap().log.clone()
    }

    /// The requests of one action, in order.
    pub fn requests(&self, action: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.action == action)
            .collect()
    }

    pub fn count(&self, action: &str) -> usize {
        self.requests(action).len()
    }

    /// Every action received, in order.
    pub fn actions(&self) -> Vec<String> {
        self.log().into_iter().map(|l| l.action).collect()
    }

    pub fn clear_log(&self) {
        self.knobs.lock().unwrap().log.clear();
    }
}

impl Drop for Ec2Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    State(state): State<ProxyState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    // On its own task: a client that goes away does not cancel the request.
    tokio::spawn(handle_to_the_end(state, headers, body))
        .await
        .expect("the proxy's handler")
}

async fn handle_to_the_end(
    state: ProxyState,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let at = Instant::now();
    let params = form_decode(&String::from_utf8_lossy(&body));
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let (status, text) = if wait_while_held(&state, &action).await {
        answer(&state, &headers, &action, &params, body).await
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InternalError</Code>\
             <Message>Dropped by the test proxy.</Message></Error></Errors><RequestID>ec2proxy-drop</RequestID></Response>"
                .to_owned(),
        )
    };
    state.knobs.lock().unwrap().log.push(Logged {
        action,
        at,
        status: status.as_u16(),
        params,
    });
    (status, [("content-type", "text/xml")], text)
}

/// Wait while `action` is held; whether the request goes on (false: drop it).
async fn wait_while_held(state: &ProxyState, action: &str) -> bool {
    let mut held = state.held.subscribe();
    if held.borrow_and_update().get(action) != Some(&Hold::Wait) {
        return true;
    }
    *state
        .knobs
        .lock()
        .unwrap()
        .holding
        .entry(action.to_owned())
        .or_default() += 1;
    let outcome = held
        .wait_for(|h| h.get(action) != Some(&Hold::Wait))
        .await
        .map(|h| h.get(action).copied())
        .expect("the proxy's hold knob");
    *state
        .knobs
        .lock()
        .unwrap()
        .holding
        .entry(action.to_owned())
        .or_default() -= 1;
    outcome != Some(Hold::Drop)
}

async fn answer(
    state: &ProxyState,
    headers: &HeaderMap,
    action: &str,
    params: &[(String, String)],
    body: Bytes,
) -> (StatusCode, String) {
    let fault = {
        let mut knobs = state.knobs.lock().unwrap();
        match knobs.faults.get_mut(action) {
            Some((status, code, left)) if *left > 0 => {
                *left -= 1;
                Some((*status, code.clone()))
            }
            _ => None,
        }
    };
    if let Some((status, code)) = fault {
        return (
            StatusCode::from_u16(status).unwrap(),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
                 <Message>Injected by the test proxy: {}.</Message></Error></Errors><RequestID>ec2proxy-fault</RequestID></Response>",
                xml(&code),
                xml(&code)
            ),
        );
    }
    if action != "CreateFleet" {
        return forward(state, headers, body).await;
    }
    let out = state.knobs.lock().unwrap().out_of_capacity.clone();
    let (kept, removed) = without_out_of_capacity(params, &out);
    if removed.is_empty() {
        return forward(state, headers, body).await;
    }
    let errors: String = removed.iter().map(error_item).collect();
    let remaining = kept
        .iter()
        .any(|(k, _)| k.contains(".Overrides.") && k.ends_with(".InstanceType"));
    if !remaining {
        let n = {
            let mut knobs = state.knobs.lock().unwrap();
            knobs.fleets += 1;
            knobs.fleets
        };
        return (
            StatusCode::OK,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                 <requestId>ec2proxy-{n}</requestId><fleetId>fleet-ec2proxy-{n:08}</fleetId><errorSet>{errors}</errorSet>\
                 <fleetInstanceSet/></CreateFleetResponse>"
            ),
        );
    }
    let (status, text) = forward(state, headers, Bytes::from(form_encode(&kept))).await;
    if !status.is_success() {
        return (status, text);
    }
    let text = match text.rfind("</CreateFleetResponse>") {
        Some(at) => format!(
            "{}<errorSet>{errors}</errorSet>{}",
            &text[..at],
            &text[at..]
        ),
        None => text,
    };
    (status, text)
}

async fn forward(state: &ProxyState, headers: &HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut request = state.http.post(&state.upstream).body(body);
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.expect("moto answers");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.expect("moto's body"))
}

/// An override taken out of a CreateFleet.
#[derive(Clone, Debug)]
struct Removed {
    template: String,
    version: String,
    instance_type: String,
    subnet: Option<String>,
    zone: Option<String>,
    lifecycle: String,
}

/// The CreateFleet parameters without the out-of-capacity overrides (configs and overrides
/// renumbered), and what was removed.
fn without_out_of_capacity(
    params: &[(String, String)],
    out: &HashSet<(String, String)>,
) -> (Vec<(String, String)>, Vec<Removed>) {
    let lifecycle = params
        .iter()
        .find(|(k, _)| k == "TargetCapacitySpecification.DefaultTargetCapacityType")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "on-demand".to_owned());
    // config n → (spec fields, override m → fields)
    type Fields = Vec<(String, String)>;
    let mut configs: BTreeMap<u32, (Fields, BTreeMap<u32, Fields>)> = BTreeMap::new();
    let mut others = Vec::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix("LaunchTemplateConfigs.") else {
            others.push((k.clone(), v.clone()));
            continue;
        };
        let Some((n, rest)) = rest.split_once('.') else {
            others.push((k.clone(), v.clone()));
            continue;
        };
        let n: u32 = n.parse().expect("config index");
        let config = configs.entry(n).or_default();
        match rest.strip_prefix("Overrides.") {
            Some(o) => {
                let (m, field) = o.split_once('.').expect("override field");
                config
                    .1
                    .entry(m.parse().expect("override index"))
                    .or_default()
                    .push((field.to_owned(), v.clone()));
            }
            None => config.0.push((rest.to_owned(), v.clone())),
        }
    }
    let field = |fields: &Fields, name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut kept = others;
    let mut removed = Vec::new();
    let mut next_config = 0;
    for (spec, overrides) in configs.values() {
        let template = field(spec, "LaunchTemplateSpecification.LaunchTemplateName")
            .or_else(|| field(spec, "LaunchTemplateSpecification.LaunchTemplateId"))
            .unwrap_or_default();
        let version = field(spec, "LaunchTemplateSpecification.Version").unwrap_or_default();
        let mut left = Vec::new();
        for fields in overrides.values() {
            let instance_type = field(fields, "InstanceType").unwrap_or_default();
            if out.contains(&(instance_type.clone(), lifecycle.clone())) {
                removed.push(Removed {
                    template: template.clone(),
                    version: version.clone(),
                    instance_type,
                    subnet: field(fields, "SubnetId"),
                    zone: field(fields, "AvailabilityZone"),
                    lifecycle: lifecycle.clone(),
                });
            } else {
                left.push(fields);
            }
        }
        if left.is_empty() && !overrides.is_empty() {
            continue;
        }
        next_config += 1;
        for (k, v) in spec {
            kept.push((
                format!("LaunchTemplateConfigs.{next_config}.{k}"),
                v.clone(),
            ));
        }
        for (m, fields) in left.iter().enumerate() {
            for (k, v) in *fields {
                kept.push((
                    format!(
                        "LaunchTemplateConfigs.{next_config}.Overrides.{}.{k}",
                        m + 1
                    ),
                    v.clone(),
                ));
            }
        }
    }
    (kept, removed)
}

/// One `errorSet` item of a CreateFleet answer.
fn error_item(r: &Removed) -> String {
    let mut overrides = format!("<instanceType>{}</instanceType>", xml(&r.instance_type));
    if let Some(subnet) = &r.subnet {
        overrides.push_str(&format!("<subnetId>{}</subnetId>", xml(subnet)));
    }
    if let Some(zone) = &r.zone {
        overrides.push_str(&format!(
            "<availabilityZone>{}</availabilityZone>",
            xml(zone)
        ));
    }
    let zone = r
        .zone
        .as_deref()
        .unwrap_or("the Availability Zone you requested");
    format!(
        "<item><launchTemplateAndOverrides><launchTemplateSpecification>\
         <launchTemplateName>{}</launchTemplateName><version>{}</version></launchTemplateSpecification>\
         <overrides>{overrides}</overrides></launchTemplateAndOverrides><lifecycle>{}</lifecycle>\
         <errorCode>InsufficientInstanceCapacity</errorCode>\
         <errorMessage>We currently do not have sufficient {} capacity in the Availability Zone you requested ({}).</errorMessage></item>",
        xml(&r.template),
        xml(&r.version),
        xml(&r.lifecycle),
        xml(&r.instance_type),
        xml(zone),
    )
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `application/x-www-form-urlencoded` pairs.
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn form_encode(params: &[(String, String)]) -> String {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
