//! Service tickets seen from every channel, legal transitions, service levels (shorter for the
//! VIP tier) and overdue tickets; feedback summaries and the interaction log.

use omni_proto::common::ChannelKind;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::engagement_service_client::EngagementServiceClient;
use omni_proto::omni::crm::v1::ticket_service_client::TicketServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{World, order};

fn tickets(w: &World) -> TicketServiceClient<AuthChannel> {
    TicketServiceClient::new(w.crm.admin())
}

fn engagement(w: &World) -> EngagementServiceClient<AuthChannel> {
    EngagementServiceClient::new(w.crm.admin())
}

async fn open(w: &World, customer: &str, channel: &str, key: &str) -> pb::Ticket {
    tickets(w)
        .open_ticket(pb::OpenTicketRequest {
            idempotency_key: key.into(),
            customer_id: customer.into(),
            kind: 1,
            channel_id: channel.into(),
            subject: "the zip broke".into(),
            description: "after two days".into(),
            ..Default::default()
        })
        .await
        .expect("open")
        .into_inner()
        .ticket
        .expect("ticket")
}

async fn transition(w: &World, id: &str, status: i32) -> Result<pb::Ticket, tonic::Status> {
    tickets(w)
        .transition_ticket(pb::TransitionTicketRequest {
            ticket_id: id.into(),
            status,
            note: String::new(),
        })
        .await
        .map(|r| r.into_inner().ticket.expect("ticket"))
}

fn secs(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().expect("timestamp").seconds
}

#[tokio::test]
async fn a_livestream_complaint_is_visible_from_the_store_and_moves_only_along_legal_transitions() {
    let w = World::start().await;
    let ada = w.register("+447700900601", "Ada").await;
    w.view_when(&ada, |_| true).await;
    let ticket = open(&w, &ada, "live", "open-1").await;
    assert_eq!(ticket.status, 1);
    assert_eq!(ticket.channel_id, "live");
    // A retry with the same key opens nothing new.
    assert_eq!(open(&w, &ada, "live", "open-1").await.id, ticket.id);

    // A store app scoped to its own channel sees the livestream complaint.
    let store_app = TicketServiceClient::new(w.crm.with_token(&omni_testkit::token(
        &[Role::ChannelApp],
        Scope {
            channels: vec!["store-1".into()],
            stores: Vec::new(),
        },
    )));
    let listed = store_app
        .clone()
        .list_tickets(pb::ListTicketsRequest {
            customer_id: ada.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .tickets;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ticket.id);
    let view = w.view_when(&ada, |v| !v.open_tickets.is_empty()).await;
    assert_eq!(view.open_tickets[0].channel_id, "live");

    // Open -> closed is illegal, and writes nothing.
    let illegal = transition(&w, &ticket.id, 5).await.expect_err("illegal");
    assert_eq!(illegal.code(), Code::FailedPrecondition);
    let kinds: Vec<String> = illegal
        .get_details_precondition_failure()
        .expect("precondition")
        .violations
        .into_iter()
        .map(|v| v.r#type)
        .collect();
    assert_eq!(kinds, vec!["TICKET_TRANSITION".to_owned()]);

    tickets(&w)
        .assign_ticket(pb::AssignTicketRequest {
            ticket_id: ticket.id.clone(),
            assignee_id: "assoc-1".into(),
        })
        .await
        .expect("assign");
    let noted = tickets(&w)
        .add_ticket_note(pb::AddTicketNoteRequest {
            ticket_id: ticket.id.clone(),
            channel_id: "store-1".into(),
            body: "we will replace it".into(),
            customer_visible: true,
            ..Default::default()
        })
        .await
        .expect("note")
        .into_inner()
        .ticket
        .expect("ticket");
    assert!(noted.first_response_at.is_some());
    assert_eq!(noted.notes.len(), 1);
    assert_eq!(noted.assignee_id, "assoc-1");

    assert_eq!(
        transition(&w, &ticket.id, 2).await.expect("start").status,
        2
    );
    assert_eq!(transition(&w, &ticket.id, 2).await.expect("same").status, 2);
    let resolved = transition(&w, &ticket.id, 4).await.expect("resolve");
    assert!(resolved.resolved_at.is_some());
    assert_eq!(
        transition(&w, &ticket.id, 5).await.expect("close").status,
        5
    );
    let reopen = transition(&w, &ticket.id, 2)
        .await
        .expect_err("closed stays closed");
    assert_eq!(reopen.code(), Code::FailedPrecondition);
    let view = w.view_when(&ada, |v| v.open_tickets.is_empty()).await;
    assert!(view.open_tickets.is_empty());

    let unknown = tickets(&w)
        .open_ticket(pb::OpenTicketRequest {
            customer_id: "nobody".into(),
            kind: 1,
            channel_id: "web".into(),
            subject: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown customer");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = tickets(&w)
        .open_ticket(pb::OpenTicketRequest {
            customer_id: ada.clone(),
            ..Default::default()
        })
        .await
        .expect_err("bad ticket");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = bad
        .get_details_bad_request()
        .expect("bad request")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["kind", "channel_id", "subject"]);
}

#[tokio::test]
async fn vip_tickets_get_shorter_targets_and_show_as_overdue_first() {
    let w = World::start().await;
    let vip = w.register("+447700900611", "Vip").await;
    let member = w.register("+447700900612", "Member").await;
    // 2,500.00 of spend makes the VIP gold.
    w.orders
        .complete(&order(&vip, "web", ChannelKind::EShop, 250_000))
        .await;
    w.view_when(&vip, |v| v.tier == "gold").await;
    w.view_when(&member, |_| true).await;
    let vip_ticket = open(&w, &vip, "web", "").await;
    let member_ticket = open(&w, &member, "web", "").await;
    let created = secs(&vip_ticket.created_at);
    // Complaints: gold answered within 1 hour, everyone else within 4.
    assert_eq!(secs(&vip_ticket.response_due_at) - created, 3_600);
    assert_eq!(
        secs(&member_ticket.response_due_at) - secs(&member_ticket.created_at),
        4 * 3_600
    );

    let overdue = |hours: i64| {
        let w = &w;
        async move {
            tickets(w)
                .list_overdue_tickets(pb::ListOverdueTicketsRequest {
                    as_of: Some(prost_types::Timestamp {
                        seconds: created + hours * 3_600,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .expect("overdue")
                .into_inner()
                .tickets
        }
    };
    assert!(overdue(0).await.is_empty());
    let late = overdue(2).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].ticket.as_ref().expect("ticket").id, vip_ticket.id);
    assert_eq!(late[0].overdue, 1);
    let late = overdue(5).await;
    let ids: Vec<String> = late
        .iter()
        .map(|t| t.ticket.as_ref().expect("ticket").id.clone())
        .collect();
    assert_eq!(ids, vec![vip_ticket.id.clone(), member_ticket.id.clone()]);

    // A customer-visible answer stops the response clock.
    tickets(&w)
        .add_ticket_note(pb::AddTicketNoteRequest {
            ticket_id: vip_ticket.id.clone(),
            body: "on it".into(),
            customer_visible: true,
            ..Default::default()
        })
        .await
        .expect("note");
    let late = overdue(5).await;
    assert_eq!(late.len(), 1);
    assert_eq!(
        late[0].ticket.as_ref().expect("ticket").id,
        member_ticket.id
    );

    // An admin shortens the member level; new tickets follow it.
    tickets(&w)
        .set_ticket_service_level(pb::SetTicketServiceLevelRequest {
            level: Some(pb::TicketServiceLevel {
                kind: 1,
                tier: String::new(),
                response_target: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                resolution_target: Some(prost_types::Duration {
                    seconds: 7_200,
                    nanos: 0,
                }),
            }),
        })
        .await
        .expect("level");
    let next = open(&w, &member, "web", "").await;
    assert_eq!(secs(&next.response_due_at) - secs(&next.created_at), 600);
}

#[tokio::test]
async fn feedback_is_summarised_per_channel_and_store_and_bad_scores_write_nothing() {
    let w = World::start().await;
    let ada = w.register("+447700900621", "Ada").await;
    w.view_when(&ada, |_| true).await;
    let record = |channel: &str, store: &str, scale: i32, score: i32| pb::RecordFeedbackRequest {
        feedback: Some(pb::Feedback {
            customer_id: ada.clone(),
            channel_id: channel.into(),
            store_id: store.into(),
            scale,
            score,
            comment: "ok".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (channel, store, scale, score) in [
        ("store", "s1", 1, 5),
        ("store", "s1", 1, 4),
        ("store", "s2", 1, 3),
        ("store", "s2", 2, 10),
        ("store", "s2", 2, 3),
        ("web", "", 2, 9),
    ] {
        engagement(&w)
            .record_feedback(record(channel, store, scale, score))
            .await
            .expect("feedback");
    }
    let bad = engagement(&w)
        .record_feedback(record("web", "", 1, 6))
        .await
        .expect_err("csat out of range");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        bad.get_details_bad_request()
            .expect("details")
            .field_violations[0]
            .field,
        "feedback.score"
    );

    let summaries = engagement(&w)
        .summarize_feedback(pb::SummarizeFeedbackRequest {
            by_store: true,
            ..Default::default()
        })
        .await
        .expect("summary")
        .into_inner()
        .summaries;
    let find = |channel: &str, store: &str| {
        summaries
            .iter()
            .find(|s| s.channel_id == channel && s.store_id == store)
            .unwrap_or_else(|| panic!("no summary for {channel}/{store}: {summaries:#?}"))
    };
    let store = find("store", "");
    assert_eq!(store.csat_count, 3);
    assert_eq!(store.csat_average, Some(4.0));
    assert_eq!(
        (store.nps_count, store.promoters, store.detractors),
        (2, 1, 1)
    );
    assert_eq!(store.nps, Some(0.0));
    assert_eq!(find("store", "s1").csat_average, Some(4.5));
    assert_eq!(find("web", "").nps, Some(100.0));
    assert_eq!(summaries.len(), 4);
    let listed = engagement(&w)
        .list_feedback(pb::ListFeedbackRequest {
            customer_id: ada.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .feedback;
    assert_eq!(listed.len(), 6);
}

#[tokio::test]
async fn interactions_are_logged_with_channel_and_time_and_shown_newest_first() {
    let w = World::start().await;
    let ada = w.register("+447700900631", "Ada").await;
    w.view_when(&ada, |_| true).await;
    for (kind, channel, ago) in [(1, "store-1", 3_600), (2, "live", 60)] {
        engagement(&w)
            .record_interaction(pb::RecordInteractionRequest {
                idempotency_key: format!("touch-{kind}"),
                interaction: Some(pb::Interaction {
                    customer_id: ada.clone(),
                    kind,
                    channel_id: channel.into(),
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - ago,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .expect("interaction");
    }
    let view = w
        .view_when(&ada, |v| v.recent_interactions.len() == 2)
        .await;
    assert_eq!(view.recent_interactions[0].kind, 2);
    assert_eq!(view.recent_interactions[0].channel_id, "live");
    let only_visits = engagement(&w)
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: ada.clone(),
            kinds: vec![1],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .interactions;
    assert_eq!(only_visits.len(), 1);
    assert_eq!(only_visits[0].channel_id, "store-1");
    // A caller limited to the livestream lists the livestream's interactions only.
    let live_app = EngagementServiceClient::new(w.crm.with_token(&omni_testkit::token(
        &[Role::ChannelApp],
        Scope {
            channels: vec!["live".into()],
            ..Scope::default()
        },
    )));
    let seen: Vec<String> = live_app
        .clone()
        .list_interactions(pb::ListInteractionsRequest {
            customer_id: ada.clone(),
            ..Default::default()
        })
        .await
        .expect("list as the livestream")
        .into_inner()
        .interactions
        .into_iter()
        .map(|i| i.channel_id)
        .collect();
    assert_eq!(seen, ["live"]);
    let unknown = engagement(&w)
        .record_interaction(pb::RecordInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: "nobody".into(),
                kind: 1,
                channel_id: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("unknown customer");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn a_merge_moves_tickets_interactions_and_consent_to_the_survivor() {
    let w = World::start().await;
    let a = w.register("+447700900641", "Ann").await;
    let b = w.register("+447700900642", "Anne").await;
    w.view_when(&a, |_| true).await;
    w.view_when(&b, |_| true).await;
    let ticket = open(&w, &b, "live", "").await;
    engagement(&w)
        .record_interaction(pb::RecordInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: b.clone(),
                kind: 1,
                channel_id: "store-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("interaction");
    w.consent(&b, ChannelKind::Social, true).await;
    w.view_when(&b, |v| {
        v.profile
            .as_ref()
            .is_some_and(|p| !p.marketing_opt_ins.is_empty())
    })
    .await;
    w.identity_client()
        .merge_customers(omni_proto::omni::identity::v1::MergeCustomersRequest {
            survivor_id: a.clone(),
            duplicate_id: b.clone(),
            reason: "same person".into(),
        })
        .await
        .expect("merge");
    let view = w
        .view_when(&a, |v| {
            v.open_tickets.len() == 1 && v.recent_interactions.len() == 1
        })
        .await;
    assert_eq!(view.open_tickets[0].id, ticket.id);
    assert_eq!(
        view.profile.expect("profile").marketing_opt_ins,
        vec![ChannelKind::Social as i32]
    );
    let listed = tickets(&w)
        .list_tickets(pb::ListTicketsRequest {
            customer_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("list by the merged id")
        .into_inner()
        .tickets;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].customer_id, a);
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_caller() {
    let w = World::start().await;
    let ada = w.register("+447700900611", "Ada").await;
    w.view_when(&ada, |_| true).await;
    let as_worker = || {
        TicketServiceClient::new(
            w.crm
                .with_token(&omni_testkit::token(&[Role::Admin], Scope::default())),
        )
    };
    let (mut first, mut second) = (as_worker(), as_worker());
    let request = |subject: &str| pb::OpenTicketRequest {
        idempotency_key: "shared-key".into(),
        customer_id: ada.clone(),
        kind: 1,
        channel_id: "eshop".into(),
        subject: subject.into(),
        ..Default::default()
    };
    let mine = first
        .open_ticket(request("the zip broke"))
        .await
        .expect("first caller")
        .into_inner()
        .ticket
        .expect("ticket");
    // Another caller's same key is another call: neither refused nor given the first reply.
    let theirs = second
        .open_ticket(request("wrong size"))
        .await
        .expect("second caller, same key, other request")
        .into_inner()
        .ticket
        .expect("ticket");
    assert_ne!(mine.id, theirs.id);
    assert_eq!(theirs.subject, "wrong size");
    // Each caller's retry gets its own first reply.
    let again = first
        .open_ticket(request("the zip broke"))
        .await
        .expect("retry")
        .into_inner()
        .ticket
        .expect("ticket");
    assert_eq!(again.id, mine.id);
}
