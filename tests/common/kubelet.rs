//! A kubelet (+ AWS cloud provider) stand-in: EC2 instances in moto "join" the test control plane
//! cluster as Nodes.
//!
//! Every `poll_interval` (200 ms) it calls DescribeInstances and, for each `running` instance
//! tagged `kubernetes.io/cluster/<cluster>` that it has not registered yet, once
//! `registration_delay` has passed since it first saw it running (and unless paused), creates
//! the Node the real kubelet and cloud provider would:
//!
//! - name: the private DNS name (`ip-10-0-1-23.ec2.internal`), else the instance id;
//! - `spec.providerID`: `aws:///<zone>/<instance-id>`; `spec.taints`: `--register-with-taints`;
//! - labels: the kubelet's own (`kubernetes.io/hostname`, `kubernetes.io/os`,
//!   `kubernetes.io/arch` and their `beta.` twins), the cloud provider's
//!   (`node.kubernetes.io/instance-type`, `topology.kubernetes.io/zone|region` and their beta
//!   twins), then `--node-labels` (which win, as on a real kubelet);
//! - `status.capacity` / `allocatable` (cpu, memory, pods, ephemeral-storage, GPUs) from the
//!   embedded catalog (`nodewright::model::catalog::InstanceType::{capacity, allocatable}`, the
//!   EKS AMI formulas; `--max-pods=N` honoured), falling back to DescribeInstanceTypes;
//! - `Ready=True` (and the pressure conditions False), addresses, nodeInfo.
//!
//! User data comes from DescribeInstanceAttribute(userData) (moto fills it from the launch
//! template for RunInstances and CreateFleet), else from the instance's launch template
//! (`aws:ec2launchtemplate:id` / `version` tags, DescribeLaunchTemplateVersions). It is base64;
//! the decoded text is searched for the tokens `--node-labels=k=v,...` and
//! `--register-with-taints=k=v:Effect,...` (each possibly wrapped in single or double quotes).
//!
//! A Node it registered is deleted when its instance is terminated, shutting down or gone (the
//! cloud node lifecycle controller's job). A registered instance is never registered again,
//! even if its Node is deleted while it runs. Nodes it did not create are never touched.
//!
//! With `run_pods`, it also plays the kubelet for pods bound to its nodes: a Pending pod
//! becomes Running and Ready (pods/status), and a terminating pod is removed at once (its
//! containers exit on SIGTERM).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName};
use base64::Engine;
use nodewright::model::catalog::{Catalog, KubeletSettings};
use nodewright::model::resources::{CPU, EPHEMERAL, MEMORY, NAMES, PODS, Resources};
use serde_json::{Value, json};

/// What to run with.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// `kubernetes.io/cluster/<cluster>` tag instances must carry.
    pub cluster: String,
    /// For `topology.kubernetes.io/region` and the catalog (us-east-1 and eu-west-1 are
    /// embedded; others fall back to DescribeInstanceTypes).
    pub region: String,
    pub poll_interval: Duration,
    /// Time from first seeing an instance running to creating its Node.
    pub registration_delay: Duration,
    /// Don't register anything (to test registration timeouts); terminations still delete.
    pub paused: bool,
    /// Also run the pods bound to registered nodes (Pending → Running, terminating → gone).
    pub run_pods: bool,
    pub kubelet_version: String,
    /// Annotate the Nodes `kwok.x-k8s.io/node: fake`, so that kwok (on the real control plane)
    /// keeps them Ready with heartbeats and runs their pods, as kubelets would.
    pub kwok: bool,
}

impl KubeletConfig {
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            region: "us-east-1".into(),
            poll_interval: Duration::from_millis(200),
            registration_delay: Duration::ZERO,
            paused: false,
            run_pods: false,
            kubelet_version: "v1.34.0".into(),
            kwok: false,
        }
    }
}

/// One Node this stand-in created.
#[derive(Clone, Debug)]
pub struct Registration {
    pub instance_id: String,
    pub node: String,
    pub provider_id: String,
    pub instance_type: String,
    pub zone: String,
    pub private_ip: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    /// The decoded user data it read (empty if none).
    pub user_data: String,
    /// When it first saw the instance running, and when the Node was created.
    pub seen_at: Instant,
    pub registered_at: Instant,
}

#[derive(Default)]
struct State {
    registrations: Vec<Registration>,
    /// (instance id, node) of Nodes it deleted.
    deletions: Vec<(String, String)>,
    errors: Vec<String>,
    paused: bool,
    registration_delay: Duration,
}

struct Inner {
    kube: kube::Client,
    ec2: aws_sdk_ec2::Client,
    config: KubeletConfig,
    catalog: Option<Catalog>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, e: String) {
        let mut st = self.state();
        if st.errors.len() < 1000 {
            st.errors.push(e);
        }
    }
}

/// The running kubelets of every instance; dropping it stops them.
pub struct Kubelets {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An EC2 client for moto (or any endpoint): dummy credentials, no retries, configured in
/// code so parallel tests don't share environment.
pub fn ec2_client(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    use aws_sdk_ec2::config::retry::RetryConfig;
    use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .http_client(nodewright::cloud::ec2::http_client())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

impl Kubelets {
    /// Defaults for `cluster` (us-east-1, 200 ms, no delay). Must be called inside a tokio
    /// runtime.
    pub fn start(kube: kube::Client, ec2: aws_sdk_ec2::Client, cluster: &str) -> Kubelets {
        Self::start_with(kube, ec2, KubeletConfig::new(cluster))
    }

    pub fn start_with(
        kube: kube::Client,
        ec2: aws_sdk_ec2::Client,
        config: KubeletConfig,
    ) -> Kubelets {
        let catalog = nodewright::cloud::catalog::embedded(
            &config.region,
            &nodewright::config::PricingSpec::default(),
        )
        .ok();
        let state = State {
            paused: config.paused,
            registration_delay: config.registration_delay,
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            kube,
            ec2,
            config,
            catalog,
            state: Mutex::new(state),
        });
        let task = tokio::spawn(run(inner.clone()));
        Kubelets { inner, task }
    }

    pub fn set_paused(&self, paused: bool) {
        self.inner.state().paused = paused;
    }

    pub fn set_registration_delay(&self, delay: Duration) {
        self.inner.state().registration_delay = delay;
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.inner.state().registrations.clone()
    }

    /// `(instance id, node)` of the Nodes it deleted after their instance went away.
    pub fn deletions(&self) -> Vec<(String, String)> {
        self.inner.state().deletions.clone()
    }

    /// EC2 / API errors it met (it keeps going).
    pub fn errors(&self) -> Vec<String> {
        self.inner.state().errors.clone()
    }

    /// The Node name of `instance_id`, once registered.
    pub fn node_of(&self, instance_id: &str) -> Option<String> {
        self.inner
            .state()
            .registrations
            .iter()
            .find(|r| r.instance_id == instance_id)
            .map(|r| r.node.clone())
    }

    /// Wait up to `within` for `instance_id` to be registered; its Node name.
    pub async fn wait_registered(&self, instance_id: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(n) = self.node_of(instance_id) {
                return Some(n);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// What the kubelet reads from the user data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeletFlags {
    pub node_labels: BTreeMap<String, String>,
    /// `{"key","value"?,"effect"}` as Node `spec.taints` entries.
    pub taints: Vec<Value>,
    pub max_pods: Option<u32>,
}

/// `--flag=value` tokens of the user data, wherever they start in a whitespace-separated token
/// (so `'--flag=v'`, `"--flag=v"` and `ARGS='--flag=v'` all count); quotes around the value are
/// dropped.
fn flag_values<'a>(text: &'a str, flag: &str) -> Vec<&'a str> {
    let prefix = format!("--{flag}=");
    text.split(|c: char| c.is_whitespace())
        .filter_map(|tok| {
            // `--flag=v`, `'--flag=v'`, `"--flag=v"`, `ARGS='--flag=v` ...
            let at = tok.find(prefix.as_str())?;
            Some(tok[at + prefix.len()..].trim_matches(|c| c == '\'' || c == '"'))
        })
        .collect()
}

/// Parse `--node-labels`, `--register-with-taints` and `--max-pods` out of decoded user data.
pub fn parse_kubelet_flags(user_data: &str) -> KubeletFlags {
    let mut flags = KubeletFlags::default();
    for v in flag_values(user_data, "node-labels") {
        for pair in v.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            flags.node_labels.insert(k.to_string(), v.to_string());
        }
    }
    for v in flag_values(user_data, "register-with-taints") {
        for t in v.split(',').filter(|p| !p.is_empty()) {
            let (kv, effect) = t.rsplit_once(':').unwrap_or((t, ""));
            let mut taint = serde_json::Map::new();
            match kv.split_once('=') {
                Some((k, v)) => {
                    taint.insert("key".into(), json!(k));
                    if !v.is_empty() {
                        taint.insert("value".into(), json!(v));
                    }
                }
                None => {
                    taint.insert("key".into(), json!(kv));
                }
            }
            taint.insert("effect".into(), json!(effect));
            flags.taints.push(Value::Object(taint));
        }
    }
    if let Some(v) = flag_values(user_data, "max-pods").last() {
        flags.max_pods = v.parse().ok();
    }
    flags
}

/// Base64 user data, decoded (lossy UTF-8); the text itself if it is not base64.
pub fn decode_user_data(b64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => b64.to_string(),
    }
}

struct Seen {
    id: String,
    state: String,
    zone: String,
    instance_type: String,
    dns: String,
    ip: String,
    arch: Option<String>,
    tags: HashMap<String, String>,
}

async fn describe(ec2: &aws_sdk_ec2::Client) -> Result<Vec<Seen>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = ec2
            .describe_instances()
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "DescribeInstances: {}",
                    aws_sdk_ec2::error::DisplayErrorContext(&e)
                )
            })?;
        for r in resp.reservations() {
            for i in r.instances() {
                out.push(Seen {
                    id: i.instance_id().unwrap_or("").to_string(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or("")
                        .to_string(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    dns: i.private_dns_name().unwrap_or("").to_string(),
                    ip: i.private_ip_address().unwrap_or("").to_string(),
                    arch: i.architecture().map(|a| a.as_str().to_string()),
                    tags: i
                        .tags()
                        .iter()
                        .map(|t| {
                            (
                                t.key().unwrap_or("").to_string(),
                                t.value().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                });
            }
        }
        token = resp
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

async fn user_data(ec2: &aws_sdk_ec2::Client, i: &Seen) -> Result<String, String> {
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&i.id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeInstanceAttribute {}: {}",
                i.id,
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )
        })?;
    if let Some(v) = attr
        .user_data()
        .and_then(|u| u.value())
        .filter(|v| !v.is_empty())
    {
        return Ok(decode_user_data(v));
    }
    let Some(lt) = i.tags.get("aws:ec2launchtemplate:id") else {
        return Ok(String::new());
    };
    let mut req = ec2
        .describe_launch_template_versions()
        .launch_template_id(lt);
    if let Some(v) = i.tags.get("aws:ec2launchtemplate:version") {
        req = req.versions(v);
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "DescribeLaunchTemplateVersions {lt}: {}",
            aws_sdk_ec2::error::DisplayErrorContext(&e)
        )
    })?;
    Ok(resp
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .and_then(|d| d.user_data())
        .map(decode_user_data)
        .unwrap_or_default())
}

/// (capacity, allocatable, arch) of an instance type.
async fn sizes(
    inner: &Inner,
    instance_type: &str,
    max_pods: Option<u32>,
) -> Result<(Value, Value, Option<String>), String> {
    let kubelet = KubeletSettings {
        max_pods,
        ..Default::default()
    };
    if let Some(t) = inner.catalog.as_ref().and_then(|c| c.get(instance_type)) {
        return Ok((
            quantities(&t.capacity(&kubelet)),
            quantities(&t.allocatable(&kubelet)),
            Some(t.arch.as_str().to_string()),
        ));
    }
    // Not in the embedded catalog: DescribeInstanceTypes, with the same formulas applied by
    // hand for cpu and memory (110 pods, like a kubelet without ENI limits).
    let resp = inner
        .ec2
        .describe_instance_types()
        .instance_types(instance_type.into())
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeInstanceTypes {instance_type}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )
        })?;
    let info = resp
        .instance_types()
        .first()
        .ok_or_else(|| format!("unknown instance type {instance_type}"))?;
    let vcpus = info
        .v_cpu_info()
        .and_then(|v| v.default_v_cpus())
        .unwrap_or(1) as i64;
    let mib = info
        .memory_info()
        .and_then(|m| m.size_in_mib())
        .unwrap_or(1024);
    let arch = info.processor_info().and_then(|p| {
        p.supported_architectures()
            .iter()
            .find_map(|a| match a.as_str() {
                "x86_64" => Some("amd64".to_string()),
                "arm64" => Some("arm64".to_string()),
                _ => None,
            })
    });
    let pods = i64::from(max_pods.unwrap_or(110));
    let mut cap = Resources::ZERO;
    cap.0[CPU] = vcpus * 1000;
    cap.0[MEMORY] = mib * (1 << 20);
    cap.0[EPHEMERAL] = 20 << 30;
    cap.0[PODS] = pods;
    let mut alloc = cap;
    alloc.0[CPU] -= nodewright::model::catalog::eks_cpu_reserved_millis(vcpus as u32);
    alloc.0[MEMORY] -= (11 * pods + 255 + 100) * (1 << 20);
    alloc.0[EPHEMERAL] -= (1 << 30) + cap.0[EPHEMERAL] / 10;
    Ok((quantities(&cap), quantities(&alloc), arch))
}

/// Resources as the kubelet writes them: cpu in cores or millicores, memory in Ki, storage in
/// bytes, counts as integers; GPUs only when non-zero.
fn quantities(r: &Resources) -> Value {
    let mut m = serde_json::Map::new();
    for (slot, name) in NAMES.iter().enumerate() {
        let v = r.get(slot);
        let q = match slot {
            CPU if v % 1000 == 0 => format!("{}", v / 1000),
            CPU => format!("{v}m"),
            MEMORY if v % 1024 == 0 => format!("{}Ki", v / 1024),
            _ if slot > PODS && v == 0 => continue,
            _ => v.to_string(),
        };
        m.insert((*name).to_string(), json!(q));
    }
    Value::Object(m)
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn region_of(zone: &str, fallback: &str) -> String {
    match zone.chars().last() {
        Some(c) if c.is_ascii_lowercase() && zone.len() > 1 => zone[..zone.len() - 1].to_string(),
        _ => fallback.to_string(),
    }
}

async fn kube_json(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", content_type)
        .body(
            body.map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
    client
        .request::<Value>(req)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))
}

fn node_object(
    config: &KubeletConfig,
    i: &Seen,
    name: &str,
    flags: &KubeletFlags,
    capacity: Value,
    allocatable: Value,
    arch: &str,
) -> Value {
    let region = region_of(&i.zone, &config.region);
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/arch", arch),
        ("node.kubernetes.io/instance-type", &i.instance_type),
        ("beta.kubernetes.io/instance-type", &i.instance_type),
        ("topology.kubernetes.io/zone", &i.zone),
        ("failure-domain.beta.kubernetes.io/zone", &i.zone),
        ("topology.kubernetes.io/region", &region),
        ("failure-domain.beta.kubernetes.io/region", &region),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    for (k, v) in &flags.node_labels {
        labels.insert(k.clone(), v.clone());
    }
    let now = now_rfc3339();
    let condition = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let mut addresses = Vec::new();
    if !i.ip.is_empty() {
        addresses.push(json!({"type": "InternalIP", "address": i.ip}));
    }
    if !i.dns.is_empty() {
        addresses.push(json!({"type": "InternalDNS", "address": i.dns}));
    }
    addresses.push(json!({"type": "Hostname", "address": name}));
    let mut spec = json!({"providerID": format!("aws:///{}/{}", i.zone, i.id)});
    if !flags.taints.is_empty() {
        spec["taints"] = json!(flags.taints);
    }
    let mut annotations = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    if config.kwok {
        annotations["kwok.x-k8s.io/node"] = json!("fake");
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": i.id, "systemUUID": i.id, "bootID": i.id,
                "kernelVersion": "6.1.0-kube-standin", "osImage": "Amazon Linux 2023",
                "containerRuntimeVersion": "containerd://1.7.27", "kubeletVersion": config.kubelet_version,
                "kubeProxyVersion": config.kubelet_version, "operatingSystem": "linux", "architecture": arch,
            },
        },
    })
}

async fn run(inner: Arc<Inner>) {
    // instance id → when first seen running
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut user_data_cache: HashMap<String, String> = HashMap::new();
    let mut registered: HashSet<String> = HashSet::new();
    loop {
        if let Err(e) = tick(
            &inner,
            &mut first_seen,
            &mut user_data_cache,
            &mut registered,
        )
        .await
        {
            inner.error(e);
        }
        tokio::time::sleep(inner.config.poll_interval).await;
    }
}

async fn tick(
    inner: &Inner,
    first_seen: &mut HashMap<String, Instant>,
    user_data_cache: &mut HashMap<String, String>,
    registered: &mut HashSet<String>,
) -> Result<(), String> {
    let cfg = &inner.config;
    let tag = format!("kubernetes.io/cluster/{}", cfg.cluster);
    let instances = describe(&inner.ec2).await?;
    let by_id: HashMap<&str, &Seen> = instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let nodes = kube_json(
        &inner.kube,
        http::Method::GET,
        "/api/v1/nodes",
        "application/json",
        None,
    )
    .await?;
    let nodes: Vec<Value> = nodes
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let node_names: HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    let provider_ids: HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.pointer("/spec/providerID").and_then(Value::as_str))
        .collect();

    // Terminated instances: delete the Nodes this stand-in registered for them.
    let gone: Vec<(String, String)> = inner
        .state()
        .registrations
        .iter()
        .filter(|r| {
            by_id.get(r.instance_id.as_str()).is_none_or(|i| {
                matches!(
                    InstanceStateName::from(i.state.as_str()),
                    InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                )
            })
        })
        .map(|r| (r.instance_id.clone(), r.node.clone()))
        .collect();
    for (id, node) in gone {
        let already = inner.state().deletions.iter().any(|(i, _)| *i == id);
        if already {
            continue;
        }
        if node_names.contains(node.as_str()) {
            let path = format!("/api/v1/nodes/{node}");
            match kube_json(
                &inner.kube,
                http::Method::DELETE,
                &path,
                "application/json",
                None,
            )
            .await
            {
                Ok(_) => {}
                Err(e) if e.contains("404") || e.contains("not found") => {}
                Err(e) => {
                    inner.error(e);
                    continue;
                }
            }
        }
        inner.state().deletions.push((id, node));
    }

    let (paused, delay) = {
        let st = inner.state();
        (st.paused, st.registration_delay)
    };
    let now = Instant::now();
    for i in &instances {
        if i.state != "running" || !i.tags.contains_key(&tag) || registered.contains(&i.id) {
            continue;
        }
        let seen = *first_seen.entry(i.id.clone()).or_insert(now);
        if paused || now < seen + delay {
            continue;
        }
        let name = if i.dns.is_empty() {
            i.id.clone()
        } else {
            i.dns.clone()
        };
        let provider_id = format!("aws:///{}/{}", i.zone, i.id);
        if node_names.contains(name.as_str()) || provider_ids.contains(provider_id.as_str()) {
            // Someone else made its Node: not ours to manage.
            registered.insert(i.id.clone());
            continue;
        }
        let text = match user_data_cache.get(&i.id) {
            Some(t) => t.clone(),
            None => match user_data(&inner.ec2, i).await {
                Ok(t) => {
                    user_data_cache.insert(i.id.clone(), t.clone());
                    t
                }
                Err(e) => {
                    inner.error(e);
                    continue;
                }
            },
        };
        let flags = parse_kubelet_flags(&text);
        let (capacity, allocatable, arch) =
            match sizes(inner, &i.instance_type, flags.max_pods).await {
                Ok(x) => x,
                Err(e) => {
                    inner.error(e);
                    continue;
                }
            };
        let arch = arch
            .or_else(|| match i.arch.as_deref() {
                Some("arm64") => Some("arm64".into()),
                _ => None,
            })
            .unwrap_or_else(|| "amd64".into());
        let node = node_object(cfg, i, &name, &flags, capacity, allocatable, &arch);
        match kube_json(
            &inner.kube,
            http::Method::POST,
            "/api/v1/nodes",
            "application/json",
            Some(&node),
        )
        .await
        {
            Ok(_) => {}
            Err(e) => {
                inner.error(e);
                continue;
            }
        }
        registered.insert(i.id.clone());
        let labels = node
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        inner.state().registrations.push(Registration {
            instance_id: i.id.clone(),
            node: name,
            provider_id,
            instance_type: i.instance_type.clone(),
            zone: i.zone.clone(),
            private_ip: i.ip.clone(),
            labels,
            taints: flags.taints.clone(),
            user_data: text,
            seen_at: seen,
            registered_at: Instant::now(),
        });
    }

    if cfg.run_pods {
        run_pods(inner).await?;
    }
    Ok(())
}

/// The kubelet's side of pods on the registered nodes.
async fn run_pods(inner: &Inner) -> Result<(), String> {
    let ours: HashMap<String, String> = inner
        .state()
        .registrations
        .iter()
        .map(|r| (r.node.clone(), r.private_ip.clone()))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let pods = kube_json(
        &inner.kube,
        http::Method::GET,
        "/api/v1/pods",
        "application/json",
        None,
    )
    .await?;
    for p in pods
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(host_ip) = ours.get(node) else {
            continue;
        };
        let ns = p
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = p
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if p.pointer("/metadata/deletionTimestamp").is_some() {
            let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
            let body =
                json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0});
            if let Err(e) = kube_json(
                &inner.kube,
                http::Method::DELETE,
                &path,
                "application/json",
                Some(&body),
            )
            .await
                && !e.contains("not found")
            {
                inner.error(e);
            }
            continue;
        }
        if p.pointer("/status/phase").and_then(Value::as_str) != Some("Pending") {
            continue;
        }
        let now = now_rfc3339();
        let mut conditions: Vec<Value> = p
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                !matches!(
                    c.get("type").and_then(Value::as_str),
                    Some("Initialized" | "Ready" | "ContainersReady" | "PodReadyToStartContainers")
                )
            })
            .collect();
        for ty in [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ] {
            conditions.push(json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        }
        let statuses: Vec<Value> = p
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c.get("name").cloned().unwrap_or(json!("")),
                    "image": c.get("image").cloned().unwrap_or(json!("")),
                    "imageID": "", "containerID": "containerd://kube-standin",
                    "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                })
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running", "conditions": conditions, "startTime": now,
            "containerStatuses": statuses, "hostIP": host_ip, "podIP": host_ip,
        }});
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
        if let Err(e) = kube_json(
            &inner.kube,
            http::Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(&patch),
        )
        .await
        {
            inner.error(e);
        }
    }
    Ok(())
}
