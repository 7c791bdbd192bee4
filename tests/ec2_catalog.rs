//! The live EC2 catalog against moto (a real EC2 API emulator), through the SDK's paginators, the
//! background cache, and the standard AWS configuration chain.
//!
//! moto answers every Describe* call in one page whatever `MaxResults` says, so paging is proved
//! through [`PagingProxy`], which forwards to moto and cuts its answer into `MaxResults`-sized
//! pages with `NextToken`s, as EC2 does.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::moto::{Moto, free_port};
use nodewright::cloud::catalog::embedded;
use nodewright::cloud::ec2::{CatalogCache, client_from_env, http_client, load_catalog};
use nodewright::config::PricingSpec;
use nodewright::model::catalog::{CapacityType, Catalog, CatalogSource, InstanceType};
use tokio_util::sync::CancellationToken;

const REGION: &str = "us-east-1";
const US_EAST_1_ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
];
/// What moto reports for every spot price.
const MOTO_SPOT_PRICE: f64 = 0.00001;

/// A client for `endpoint` with dummy credentials, configured in code (no process environment,
/// so tests running in parallel cannot disturb each other) and without retries.
fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .http_client(http_client())
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn without_offerings(t: &InstanceType) -> InstanceType {
    InstanceType {
        offerings: Vec::new(),
        ..t.clone()
    }
}

#[tokio::test]
async fn live_catalog_from_moto_matches_the_published_facts_and_pages_every_call() {
    let moto = Moto::start();
    let proxy = PagingProxy::start(&moto.endpoint).await;
    let catalog = load_catalog(
        &client_for(&proxy.endpoint),
        REGION,
        &PricingSpec::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nmoto log:\n{}", moto.logs()));

    assert_eq!(catalog.source, CatalogSource::Ec2);
    assert_eq!(catalog.region, REGION);
    assert!(catalog.types.len() > 1000, "{} types", catalog.types.len());
    assert_eq!(catalog.zones(), US_EAST_1_ZONES);

    // Every page of every call was fetched: more items than one page holds, over several requests,
    // each asking for the next page by the token of the one before.
    let calls = proxy.calls();
    for (action, page) in [
        ("DescribeInstanceTypes", 100),
        ("DescribeInstanceTypeOfferings", 1000),
        ("DescribeSpotPriceHistory", 1000),
    ] {
        let pages: Vec<&Page> = calls.iter().filter(|c| c.action == action).collect();
        assert!(pages.len() > 1, "{action}: {pages:?}");
        assert!(
            pages.iter().all(|p| p.max_results == Some(page)),
            "{action}: {pages:?}"
        );
        assert_eq!(pages[0].next_token, None, "{action}");
        for pair in pages.windows(2) {
            assert_eq!(
                pair[1].next_token,
                Some(pair[0].start + pair[0].items),
                "{action}"
            );
        }
        let served: usize = pages.iter().map(|p| p.items).sum();
        assert!(served > page as usize, "{action}: {served} items");
    }
    let described = calls
        .iter()
        .filter(|c| c.action == "DescribeInstanceTypes")
        .map(|c| c.items)
        .sum::<usize>();
    assert_eq!(described, 1395, "moto's instance types");

    // m5.large: on-demand from the embedded price table, spot from moto's history.
    let m5 = catalog.get("m5.large").expect("m5.large");
    assert_eq!((m5.vcpus, m5.memory_mib, m5.max_pods_eni), (2, 8192, 29));
    let m5_zones: Vec<&str> = m5
        .offerings
        .iter()
        .filter(|o| o.capacity_type == CapacityType::OnDemand)
        .map(|o| o.zone.as_str())
        .collect();
    assert_eq!(
        m5_zones,
        [
            "us-east-1a",
            "us-east-1b",
            "us-east-1c",
            "us-east-1d",
            "us-east-1f"
        ]
    );
    for offering in &m5.offerings {
        match offering.capacity_type {
            CapacityType::OnDemand => {
                assert_eq!(offering.price, 0.096, "{offering:?}");
                assert!(!offering.price_estimated, "{offering:?}");
            }
            CapacityType::Spot => {
                assert_eq!(offering.price, MOTO_SPOT_PRICE, "{offering:?}");
                assert!(!offering.price_estimated, "{offering:?}");
            }
        }
    }
    assert_eq!(
        m5.offerings
            .iter()
            .filter(|o| o.capacity_type == CapacityType::Spot)
            .count(),
        5
    );

    // Each spot offering has moto's price, or, where the history has none, the builder's estimate.
    let mut reported = 0;
    for t in &catalog.types {
        let on_demand = t
            .offerings
            .iter()
            .find(|o| o.capacity_type == CapacityType::OnDemand)
            .map(|o| o.price);
        for spot in t
            .offerings
            .iter()
            .filter(|o| o.capacity_type == CapacityType::Spot)
        {
            if spot.price_estimated {
                let expected = on_demand.expect("on-demand price") * 0.35;
                assert!((spot.price - expected).abs() < 1e-9, "{}: {spot:?}", t.name);
            } else {
                assert_eq!(spot.price, MOTO_SPOT_PRICE, "{}: {spot:?}", t.name);
                reported += 1;
            }
        }
    }
    assert!(reported > 1000, "{reported} spot offerings priced by moto");

    // moto serves the facts AWS publishes, which the embedded snapshot holds too: the live mapping
    // must agree with it type for type, and offer the same zones.
    let snapshot = embedded(REGION, &PricingSpec::default()).unwrap();
    assert_eq!(catalog.types.len(), snapshot.types.len());
    for (live, known) in catalog.types.iter().zip(&snapshot.types) {
        assert_eq!(without_offerings(live), without_offerings(known));
        let zones = |t: &InstanceType| {
            t.offerings
                .iter()
                .map(|o| (o.zone.clone(), o.capacity_type))
                .collect::<Vec<_>>()
        };
        assert_eq!(zones(live), zones(known), "{}", live.name);
    }
}

/// Karpenter's `karpenter.k8s.aws/*` labels and device resources, read from moto's
/// DescribeInstanceTypes answer through the SDK, for types whose specifications AWS publishes.
#[tokio::test]
async fn live_catalog_carries_karpenters_labels_and_devices() {
    use nodewright::model::catalog::KubeletSettings;
    use nodewright::model::catalog::labels::*;
    use nodewright::model::resources::{EFA, NEURON, NEURONCORE, NVIDIA_GPU};

    let moto = Moto::start();
    let catalog = load_catalog(&client_for(&moto.endpoint), REGION, &PricingSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}\nmoto log:\n{}", moto.logs()));
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("p4d.24xlarge", INSTANCE_GPU_NAME, Some("a100")),
        ("p4d.24xlarge", INSTANCE_GPU_MANUFACTURER, Some("nvidia")),
        ("p4d.24xlarge", INSTANCE_GPU_COUNT, Some("8")),
        ("p4d.24xlarge", INSTANCE_GPU_MEMORY, Some("40960")),
        ("p4d.24xlarge", INSTANCE_LOCAL_NVME, Some("8000")),
        ("p4d.24xlarge", INSTANCE_NETWORK_BANDWIDTH, Some("400000")),
        (
            "inf2.xlarge",
            INSTANCE_ACCELERATOR_NAME,
            Some("inferentia2"),
        ),
        (
            "inf2.xlarge",
            INSTANCE_ACCELERATOR_MANUFACTURER,
            Some("aws"),
        ),
        ("inf2.xlarge", INSTANCE_ACCELERATOR_COUNT, Some("1")),
        ("inf2.xlarge", INSTANCE_CPU_MANUFACTURER, Some("amd")),
        ("trn1.32xlarge", INSTANCE_ACCELERATOR_NAME, Some("trainium")),
        ("m5.large", INSTANCE_NETWORK_BANDWIDTH, Some("750")),
        ("m5.large", INSTANCE_EBS_BANDWIDTH, Some("4750")),
        ("m5.large", INSTANCE_CPU_MANUFACTURER, Some("intel")),
        (
            "m5.large",
            INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ,
            Some("3100"),
        ),
        (
            "m5.large",
            INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
            Some("false"),
        ),
        ("m5.large", INSTANCE_HYPERVISOR, Some("nitro")),
        ("m5.large", INSTANCE_GPU_NAME, None),
        ("m5.metal", INSTANCE_HYPERVISOR, Some("")),
        ("m7g.large", INSTANCE_CPU_MANUFACTURER, Some("aws")),
        ("i3.large", INSTANCE_LOCAL_NVME, Some("475")),
        ("c3.large", INSTANCE_LOCAL_NVME, None),
    ];
    for (name, key, value) in cases {
        let it = catalog.get(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(it.label(key).as_deref(), *value, "{name} {key}");
    }
    let kubelet = KubeletSettings::default();
    // (type, nvidia.com/gpu, aws.amazon.com/neuron, aws.amazon.com/neuroncore, vpc.amazonaws.com/efa)
    for (name, gpus, neuron, cores, efa) in [
        ("p4d.24xlarge", 8, 0, 0, 4),
        ("inf2.xlarge", 0, 1, 2, 0),
        ("trn1.32xlarge", 0, 16, 32, 8),
        ("m5.large", 0, 0, 0, 0),
    ] {
        let a = catalog.get(name).unwrap().allocatable(&kubelet);
        assert_eq!(
            [a.0[NVIDIA_GPU], a.0[NEURON], a.0[NEURONCORE], a.0[EFA]],
            [gpus, neuron, cores, efa],
            "{name}"
        );
    }
}

#[tokio::test]
async fn failed_refresh_keeps_the_embedded_catalog_and_names_the_call() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cache = CatalogCache::new(REGION, PricingSpec::default());
    let before = cache.current();
    assert_eq!(before.source, CatalogSource::Embedded);

    let err = cache
        .refresh_once(&client_for(&dead))
        .await
        .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(message.contains("DescribeInstanceTypes"), "{message}");
    assert_eq!(err.code(), "DispatchFailure", "{message}");

    let after = cache.current();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the embedded catalog stays current"
    );
    assert!(after.types.len() > 1000);
}

#[tokio::test]
async fn a_region_without_embedded_data_starts_empty() {
    let cache = CatalogCache::new("ap-south-2", PricingSpec::default());
    let catalog = cache.current();
    assert_eq!(catalog.region, "ap-south-2");
    assert!(catalog.types.is_empty());
}

#[tokio::test]
async fn background_refresh_replaces_the_embedded_catalog_and_stops_on_cancel() {
    let moto = Moto::start();
    let cache = Arc::new(CatalogCache::new(REGION, PricingSpec::default()));
    let cancel = CancellationToken::new();
    let task = cache.spawn_refresh(
        client_for(&moto.endpoint),
        Duration::from_secs(3600),
        cancel.clone(),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while cache.current().source != CatalogSource::Ec2 {
        assert!(Instant::now() < deadline, "no refresh: {}", moto.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Arc<Catalog> = cache.current();
    assert!(live.types.len() > 1000);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the refresh task ends on cancel")
        .expect("the refresh task does not panic");
}

/// Env var that tells this test binary it was started by
/// [`standard_chain_honours_aws_endpoint_url_ec2`] with the AWS environment set.
const CHAIN_CHILD: &str = "NODEWRIGHT_TEST_EC2_CHAIN_CHILD";

/// The standard chain takes region, credentials and the EC2 endpoint from the environment alone.
/// The environment is set on a child process (this test binary, running only this test), because
/// changing this process's environment would race with the other tests.
#[tokio::test]
async fn standard_chain_honours_aws_endpoint_url_ec2() {
    if std::env::var_os(CHAIN_CHILD).is_some() {
        let client = client_from_env(None).await;
        assert_eq!(client.config().region().map(|r| r.as_ref()), Some(REGION));
        let catalog = load_catalog(&client, REGION, &PricingSpec::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(catalog.types.len() > 1000);
        return;
    }

    let moto = Moto::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "standard_chain_honours_aws_endpoint_url_ec2",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHAIN_CHILD, "1")
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL_EC2", &moto.endpoint)
        // The service-specific endpoint wins over the global one.
        .env("AWS_ENDPOINT_URL", &dead)
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        child.env_remove(var);
    }
    let output = tokio::task::spawn_blocking(move || child.output())
        .await
        .unwrap()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed ({}):\n{stdout}\n{}\nmoto log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        moto.logs()
    );
}

/// One request the proxy answered.
#[derive(Clone, Debug)]
struct Page {
    action: String,
    max_results: Option<i32>,
    next_token: Option<usize>,
    /// Index of the first item served, and how many.
    start: usize,
    items: usize,
}

/// Forwards EC2 query requests to moto and pages the answer: `MaxResults` items from the offset
/// in `NextToken`, with a `NextToken` for the rest. moto's whole answer to a request is kept, so
/// the following pages do not ask moto again (it takes about two seconds to list every type).
struct PagingProxy {
    endpoint: String,
    calls: Arc<Mutex<Vec<Page>>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    calls: Arc<Mutex<Vec<Page>>>,
    /// moto's answers by request body without `NextToken`.
    answers: Arc<Mutex<HashMap<String, (StatusCode, String)>>>,
}

impl PagingProxy {
    async fn start(upstream: &str) -> PagingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            calls: Arc::clone(&calls),
            answers: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward_paged)
            .with_state(state);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .unwrap();
        });
        PagingProxy {
            endpoint,
            calls,
            stop,
        }
    }

    fn calls(&self) -> Vec<Page> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for PagingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward_paged(
    State(state): State<ProxyState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let form = String::from_utf8_lossy(&body).into_owned();
    let param = |name: &str| {
        form.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    };
    let action = param("Action").unwrap_or_default();
    let max_results = param("MaxResults").and_then(|v| v.parse::<i32>().ok());
    let next_token = param("NextToken").map(|t| t.parse::<usize>().expect("our own token"));

    let query: String = form
        .split('&')
        .filter(|pair| !pair.starts_with("NextToken="))
        .collect::<Vec<_>>()
        .join("&");
    let known = state.answers.lock().unwrap().get(&query).cloned();
    let (status, text) = match known {
        Some(answer) => answer,
        None => {
            let mut request = state.http.post(&state.upstream).body(body.clone());
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    request = request.header(name, value);
                }
            }
            let response = request.send().await.expect("moto answers");
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let text = response.text().await.expect("moto's body");
            let answer = (status, text);
            state.answers.lock().unwrap().insert(query, answer.clone());
            answer
        }
    };
    let set = match action.as_str() {
        "DescribeInstanceTypes" => "instanceTypeSet",
        "DescribeInstanceTypeOfferings" => "instanceTypeOfferingSet",
        "DescribeSpotPriceHistory" => "spotPriceHistorySet",
        _ => return (status, text),
    };
    if !status.is_success() {
        return (status, text);
    }
    let start = next_token.unwrap_or(0);
    let page = max_results.map_or(usize::MAX, |m| m as usize);
    let (paged, items) = page_of(&text, set, start, page);
    state.calls.lock().unwrap().push(Page {
        action,
        max_results,
        next_token,
        start,
        items,
    });
    (status, paged)
}

/// `<set>`'s items `start..start + len` of an EC2 query response, with a `<nextToken>` when more
/// remain; and how many items were kept.
fn page_of(xml: &str, set: &str, start: usize, len: usize) -> (String, usize) {
    let open = format!("<{set}>");
    let close = format!("</{set}>");
    let (Some(from), Some(to)) = (xml.find(&open), xml.find(&close)) else {
        return (xml.to_owned(), 0); // an empty set (`<set/>`)
    };
    let inner = &xml[from + open.len()..to];
    // Top-level <item>s; items nest (<item> inside <item>), so count depth.
    let mut items = Vec::new();
    let (mut depth, mut item_start, mut i) = (0usize, 0usize, 0usize);
    while i < inner.len() {
        if inner[i..].starts_with("<item>") {
            if depth == 0 {
                item_start = i;
            }
            depth += 1;
            i += "<item>".len();
        } else if inner[i..].starts_with("</item>") {
            depth -= 1;
            i += "</item>".len();
            if depth == 0 {
                items.push(&inner[item_start..i]);
            }
        } else {
            i += inner[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    let end = start.saturating_add(len).min(items.len());
    let kept = &items[start.min(end)..end];
    let mut out = String::with_capacity(xml.len());
    out.push_str(&xml[..from + open.len()]);
    for item in kept {
        out.push_str(item);
    }
    out.push_str(&close);
    if end < items.len() {
        out.push_str(&format!("<nextToken>{end}</nextToken>"));
    }
    out.push_str(&xml[to + close.len()..]);
    (out, kept.len())
}
