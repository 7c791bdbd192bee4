//! The messages EventBridge puts on the interruption queue, as Karpenter's AWS provider reads
//! them (`pkg/controllers/interruption/messages`): keyed by `version`, `source` and
//! `detail-type`, each kind naming the instances it is about. Unknown kinds are no-ops (counted
//! and deleted); a body that is not an EventBridge event is an error (counted and deleted too).
//! Pure: no I/O.

use serde::Deserialize;

/// What a message says about its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// "EC2 Spot Instance Interruption Warning": the instance goes in two minutes.
    SpotInterruption,
    /// "EC2 Instance Rebalance Recommendation": the instance is at elevated risk.
    RebalanceRecommendation,
    /// "AWS Health Event", EC2 `scheduledChange`: maintenance will stop or retire it.
    ScheduledChange,
    /// "EC2 Instance State-change Notification" to `stopping`, `stopped`, `shutting-down` or
    /// `terminated`.
    StateChange(String),
    /// Any other event, or a state change nodewright does not act on (`pending`, `running`).
    NoOp,
}

impl Kind {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::SpotInterruption => "spot_interruption",
            Self::RebalanceRecommendation => "rebalance_recommendation",
            Self::ScheduledChange => "scheduled_change",
            Self::StateChange(_) => "state_change",
            Self::NoOp => "noop",
        }
    }
}

/// One parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// The EC2 instances it is about.
    pub instance_ids: Vec<String>,
    /// The event's `time`, when it has one (for the message's latency).
    pub time: Option<jiff::Timestamp>,
    /// Its `detail-type`, for logs.
    pub detail_type: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not an EventBridge event: {0}")]
    Envelope(String),
    #[error("{detail_type}: unexpected detail: {error}")]
    Detail { detail_type: String, error: String },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    version: String,
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Deserialize)]
struct InstanceDetail {
    #[serde(rename = "instance-id")]
    instance_id: String,
}

#[derive(Deserialize)]
struct StateChangeDetail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    state: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthDetail {
    #[serde(default)]
    service: String,
    #[serde(default)]
    event_type_category: String,
    #[serde(default)]
    affected_entities: Vec<AffectedEntity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AffectedEntity {
    entity_value: String,
}

/// Parse a queue message body.
pub fn parse(body: &str) -> Result<Message, ParseError> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| ParseError::Envelope(e.to_string()))?;
    let time = envelope.time.as_deref().and_then(|t| t.parse().ok());
    let message = |kind, instance_ids| Message {
        kind,
        instance_ids,
        time,
        detail_type: envelope.detail_type.clone(),
    };
    let detail_error = |e: serde_json::Error| ParseError::Detail {
        detail_type: envelope.detail_type.clone(),
        error: e.to_string(),
    };
    if envelope.version != "0" {
        return Ok(message(Kind::NoOp, Vec::new()));
    }
    match (envelope.source.as_str(), envelope.detail_type.as_str()) {
        ("aws.ec2", "EC2 Spot Instance Interruption Warning") => {
            let d: InstanceDetail =
                serde_json::from_value(envelope.detail.clone()).map_err(detail_error)?;
            Ok(message(Kind::SpotInterruption, vec![d.instance_id]))
        }
        ("aws.ec2", "EC2 Instance Rebalance Recommendation") => {
            let d: InstanceDetail =
                serde_json::from_value(envelope.detail.clone()).map_err(detail_error)?;
            Ok(message(Kind::RebalanceRecommendation, vec![d.instance_id]))
        }
        ("aws.ec2", "EC2 Instance State-change Notification") => {
            let d: StateChangeDetail =
                serde_json::from_value(envelope.detail.clone()).map_err(detail_error)?;
            let state = d.state.to_ascii_lowercase();
            if matches!(
                state.as_str(),
                "stopping" | "stopped" | "shutting-down" | "terminated"
            ) {
                Ok(message(Kind::StateChange(state), vec![d.instance_id]))
            } else {
                Ok(message(Kind::NoOp, vec![d.instance_id]))
            }
        }
        ("aws.health", "AWS Health Event") => {
            let d: HealthDetail =
                serde_json::from_value(envelope.detail.clone()).map_err(detail_error)?;
            if d.service == "EC2" && d.event_type_category == "scheduledChange" {
                let ids = d
                    .affected_entities
                    .into_iter()
                    .map(|e| e.entity_value)
                    .filter(|v| v.starts_with("i-"))
                    .collect();
                Ok(message(Kind::ScheduledChange, ids))
            } else {
                Ok(message(Kind::NoOp, Vec::new()))
            }
        }
        _ => Ok(message(Kind::NoOp, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies AWS documents (EventBridge event examples in the EC2 and Health user guides).
    const SPOT: &str = r#"{
  "version": "0",
  "id": "12345678-1234-1234-1234-123456789012",
  "detail-type": "EC2 Spot Instance Interruption Warning",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2021-02-03T14:14:14Z",
  "region": "us-east-2",
  "resources": ["arn:aws:ec2:us-east-2a:instance/i-1234567890abcdef0"],
  "detail": {"instance-id": "i-1234567890abcdef0", "instance-action": "terminate"}
}"#;
    const REBALANCE: &str = r#"{
  "version": "0",
  "id": "12345678-1234-1234-1234-123456789012",
  "detail-type": "EC2 Instance Rebalance Recommendation",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2021-02-03T14:14:14Z",
  "region": "us-east-2",
  "resources": ["arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0"],
  "detail": {"instance-id": "i-1234567890abcdef0"}
}"#;
    const STATE: &str = r#"{
  "id": "7bf73129-1428-4cd3-a780-95db273d1602",
  "detail-type": "EC2 Instance State-change Notification",
  "source": "aws.ec2",
  "account": "123456789012",
  "time": "2015-11-11T21:29:54Z",
  "region": "us-east-1",
  "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
  "detail": {"instance-id": "i-abcd1111", "state": "STATE"},
  "version": "0"
}"#;
    const HEALTH: &str = r#"{
  "version": "0",
  "id": "7bf73129-1428-4cd3-a780-95db273d1602",
  "detail-type": "AWS Health Event",
  "source": "aws.health",
  "account": "123456789012",
  "time": "2023-01-27T01:43:21Z",
  "region": "us-east-1",
  "resources": [],
  "detail": {
    "eventArn": "arn:aws:health:us-east-1::event/EC2/EC2_INSTANCE_RETIREMENT_SCHEDULED/EXAMPLE",
    "service": "EC2",
    "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
    "eventTypeCategory": "scheduledChange",
    "startTime": "Sat, 05 Jun 2023 08:00:00 GMT",
    "eventDescription": [{"language": "en_US", "latestDescription": "retirement"}],
    "affectedEntities": [{"entityValue": "i-0123456789abcdef0"}, {"entityValue": "i-0123456789abcdef1"}]
  }
}"#;

    #[test]
    fn documented_bodies_parse_to_their_kind_and_instances() {
        let m = parse(SPOT).unwrap();
        assert_eq!(m.kind, Kind::SpotInterruption);
        assert_eq!(m.instance_ids, ["i-1234567890abcdef0"]);
        assert_eq!(m.time, Some("2021-02-03T14:14:14Z".parse().unwrap()));
        let m = parse(REBALANCE).unwrap();
        assert_eq!(m.kind, Kind::RebalanceRecommendation);
        assert_eq!(m.instance_ids, ["i-1234567890abcdef0"]);
        for state in ["stopping", "stopped", "shutting-down", "terminated"] {
            let m = parse(&STATE.replace("STATE", state)).unwrap();
            assert_eq!(m.kind, Kind::StateChange(state.to_owned()));
            assert_eq!(m.instance_ids, ["i-abcd1111"]);
        }
        for state in ["pending", "running"] {
            assert_eq!(
                parse(&STATE.replace("STATE", state)).unwrap().kind,
                Kind::NoOp
            );
        }
        let m = parse(HEALTH).unwrap();
        assert_eq!(m.kind, Kind::ScheduledChange);
        assert_eq!(
            m.instance_ids,
            ["i-0123456789abcdef0", "i-0123456789abcdef1"]
        );
        let other_service = HEALTH.replace(r#""service": "EC2""#, r#""service": "RDS""#);
        assert_eq!(parse(&other_service).unwrap().kind, Kind::NoOp);
    }

    #[test]
    fn unknown_events_are_no_ops_and_broken_bodies_errors() {
        let unknown = SPOT.replace(
            "EC2 Spot Instance Interruption Warning",
            "EC2 AMI State Change",
        );
        assert_eq!(parse(&unknown).unwrap().kind, Kind::NoOp);
        let v1 = SPOT.replace(r#""version": "0""#, r#""version": "1""#);
        assert_eq!(parse(&v1).unwrap().kind, Kind::NoOp);
        assert!(matches!(parse("not json"), Err(ParseError::Envelope(_))));
        assert!(matches!(parse("{}"), Err(ParseError::Envelope(_))));
        let no_id = SPOT.replace(r#""instance-id": "i-1234567890abcdef0", "#, "");
        assert!(matches!(parse(&no_id), Err(ParseError::Detail { .. })));
        assert!(parse(&"x".repeat(300_000)).is_err());
    }
}
