//! Drift (static and of what the node class selects), against the fakes.

use super::*;

/// The fake's default view with another AMI for x86_64.
fn view_with_ami(ami: &str) -> crate::cloud::launch::NodeClassView {
    let mut view = FakeCloud::new().node_class_view();
    view.amis.insert("x86_64".to_owned(), ami.to_owned());
    view
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_ami_is_no_longer_selected_is_replaced_as_drifted() {
    let h = start(never_consolidate());
    let (old, _) = h.occupied_node().await;
    let status = old.status.as_ref().unwrap();
    assert_eq!(status.image_id.as_deref(), Some("ami-1"));
    assert_eq!(status.subnet_id.as_deref(), Some("subnet-1"));
    assert_eq!(status.security_group_ids, ["sg-1"]);
    h.run_for(Duration::from_secs(10)).await;
    assert!(
        h.creates().len() == 1 && h.deletes().is_empty(),
        "nothing drifted yet"
    );
    assert!(h.cloud.calls().contains(&Call::NodeClassView {
        node_class: "default".into()
    }));

    // A newer AMI is selected: the node has drifted and a replacement launches with the new one.
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    let claims = h
        .until("a replacement launched", |cs| {
            cs.iter()
                .any(|c| c.name() != old.name() && c.phase() == Phase::Launched)
        })
        .await;
    let drifted = claims.iter().find(|c| c.name() == old.name()).unwrap();
    let condition = drifted.condition("Drifted").unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "AMIDrift")
    );
    assert!(condition.message.contains("ami-2"), "{condition:?}");
    let s = drifted.status.as_ref().unwrap();
    assert_eq!(s.disruption_reason.as_deref(), Some("Drifted"));
    let new = claims
        .iter()
        .find(|c| c.name() != old.name())
        .unwrap()
        .clone();
    assert_eq!(s.replacements, [new.name().to_owned()]);
    assert_eq!(
        new.status.as_ref().unwrap().image_id.as_deref(),
        Some("ami-2")
    );

    // Once the replacement registers, the drifted node goes; the replacement has not drifted.
    h.node_registers(&new);
    let claims = h
        .until("the drifted claim gone", |cs| {
            cs.len() == 1 && cs[0].name() == new.name() && cs[0].phase() == Phase::Registered
        })
        .await;
    assert_eq!(h.deletes(), [vec![instance_of(&old)]]);
    assert_eq!(h.decisions("drifted", "disrupted"), 1);
    h.run_for(Duration::from_secs(10)).await;
    assert_ne!(claims[0].condition_is("Drifted"), Some(true));
    assert_eq!(h.stored().await.len(), 1, "the replacement stays");
    assert_eq!(h.disruption.drifted.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_recorded_nothing_of_its_launch_is_not_judged_by_the_cloud() {
    let cloud = FakeCloud::new();
    // Launched as a nodewright before this check recorded AMI, subnet and groups.
    cloud.set_node_class_view(Default::default());
    let h = start_with(never_consolidate(), cloud);
    let (old, _) = h.occupied_node().await;
    assert_eq!(old.status.as_ref().unwrap().image_id, None);
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    h.run_for(Duration::from_secs(20)).await;
    let claims = h.stored().await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].condition("Drifted"), None);
    assert_eq!(h.creates().len(), 1);
    assert!(h.deletes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_class_that_fails_to_resolve_keeps_its_nodes_as_they_are() {
    let h = start(never_consolidate());
    let (_, _) = h.occupied_node().await;
    for _ in 0..3 {
        h.cloud.fail_next(
            crate::cloud::fake::Op::NodeClassView,
            crate::cloud::fake::ec2_error("DescribeSubnets", "RequestLimitExceeded"),
        );
    }
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    h.run_for(Duration::from_secs(20)).await;
    let claims = h.stored().await;
    assert_eq!(claims[0].condition("Drifted"), None, "not judged");
    assert_eq!(
        h.metrics
            .ec2_errors
            .with_label_values(&["RequestLimitExceeded"])
            .get(),
        1,
        "tried once, then left alone for a while"
    );
    assert_eq!(h.creates().len(), 1);
}
