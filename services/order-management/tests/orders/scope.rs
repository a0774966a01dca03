//! Who reaches which order: channel apps act on their channels' orders only, store staff on the
//! orders that touch their stores whatever channel took them, and retries never act twice.

use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::return_service_client::ReturnServiceClient;
use omni_proto::omni::orders::v1::sourcing_service_client::SourcingServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use tonic::Code;

use crate::support::*;

fn scoped(w: &World, roles: &[Role], channels: &[&str], stores: &[&str]) -> AuthChannel {
    w.shop.orders.with_token(&omni_testkit::token(
        roles,
        Scope {
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            stores: stores.iter().map(|s| (*s).to_owned()).collect(),
        },
    ))
}

fn return_of(
    order: &pb::Order,
    channel: &str,
    location: &str,
    received: bool,
) -> pb::CreateReturnRequest {
    pb::CreateReturnRequest {
        idempotency_key: key(),
        order_id: order.id.clone(),
        lines: vec![pb::ReturnLineInput {
            order_line_id: order.lines[0].id.clone(),
            quantity: 1,
            reason: pb::ReturnReason::WrongSize as i32,
            condition: if received {
                pb::ItemCondition::Resellable as i32
            } else {
                0
            },
        }],
        channel_id: channel.to_owned(),
        location_id: location.to_owned(),
        items_received: received,
        note: String::new(),
    }
}

/// A delivered e-shop order of two tees.
async fn delivered(w: &World) -> pb::Order {
    w.receive(&w.warehouse, &w.tee_m, 10).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_m, 2)],
            ship_to(home_lyon_south()),
        ))
        .await
        .expect("placed");
    w.complete_shipping(&w.pay(&order).await).await
}

#[tokio::test]
async fn channel_apps_return_exchange_refund_and_read_only_their_channels_orders() {
    let w = World::start().await;
    let order = delivered(&w).await;
    let mut live =
        ReturnServiceClient::new(scoped(&w, &[Role::ChannelApp], &[&w.livestream.id], &[]));
    let mut eshop = ReturnServiceClient::new(scoped(&w, &[Role::ChannelApp], &[&w.eshop.id], &[]));

    // Another channel's app takes no return of the order, not even through its own channel.
    let err = live
        .create_return(return_of(&order, &w.livestream.id, &w.warehouse, false))
        .await
        .expect_err("another channel's order");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = live
        .create_exchange(pb::CreateExchangeRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            returned: return_of(&order, "", "", true).lines,
            replacements: vec![line(&w.tee_l, 1)],
            delivery: ship_to(home_lyon_south()),
            channel_id: w.livestream.id.clone(),
            location_id: w.warehouse.clone(),
            associate_id: String::new(),
        })
        .await
        .expect_err("another channel's order");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The order's own app cannot send the replacement through a channel it does not act for.
    let err = eshop
        .create_exchange(pb::CreateExchangeRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            returned: return_of(&order, "", "", true).lines,
            replacements: vec![line(&w.tee_l, 1)],
            delivery: ship_to(home_lyon_south()),
            channel_id: w.livestream.id.clone(),
            location_id: w.warehouse.clone(),
            associate_id: String::new(),
        })
        .await
        .expect_err("the replacement's channel is out of scope");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(w.count("SELECT count(*) FROM returns").await, 0);
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 1);

    let awaiting = eshop
        .create_return(return_of(&order, &w.eshop.id, &w.warehouse, false))
        .await
        .expect("its own channel's order")
        .into_inner()
        .order_return
        .expect("return");

    let err = live
        .get_return(pb::GetReturnRequest {
            return_id: awaiting.id.clone(),
        })
        .await
        .expect_err("another channel's return");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = live
        .record_refund(pb::RecordRefundRequest {
            idempotency_key: key(),
            return_id: awaiting.id.clone(),
            amount: eur(100),
            provider_reference: "psp-1".into(),
        })
        .await
        .expect_err("another channel's refund");
    assert_eq!(err.code(), Code::PermissionDenied);
    let listed = live
        .list_returns(pb::ListReturnsRequest::default())
        .await
        .expect("lists")
        .into_inner();
    assert!(listed.returns.is_empty(), "{listed:?}");

    eshop
        .get_return(pb::GetReturnRequest {
            return_id: awaiting.id.clone(),
        })
        .await
        .expect("its own");
    let listed = eshop
        .list_returns(pb::ListReturnsRequest::default())
        .await
        .expect("lists")
        .into_inner();
    assert_eq!(listed.returns.len(), 1);
}

#[tokio::test]
async fn a_store_associate_takes_back_and_hands_over_other_channels_orders_at_its_store() {
    let w = World::start().await;
    // The associate acts through the store's till channel at Lyon only.
    let associate = || {
        scoped(
            &w,
            &[Role::StoreAssociate],
            &[&w.store_channel.id],
            &[&w.lyon],
        )
    };

    // An e-shop order collected at Lyon is handed over there.
    w.receive(&w.lyon, &w.tee_m, 3).await;
    let paid = w.paid_pickup(&w.tee_m, &w.lyon).await;
    let mut store =
        omni_proto::omni::orders::v1::fulfilment_service_client::FulfilmentServiceClient::new(
            associate(),
        );
    store
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .expect("picking");
    let ready = store
        .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
            order_id: paid.id.clone(),
        })
        .await
        .expect("ready")
        .into_inner()
        .order
        .expect("order");
    let done = store
        .hand_over_pickup(pb::HandOverPickupRequest {
            order_id: paid.id.clone(),
            pickup_code: ready.pickup.expect("pickup").pickup_code,
        })
        .await
        .expect("handed over whatever channel took it")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(done.status(), pb::OrderStatus::Completed);

    // An e-shop order shipped home comes back over the counter, through the till channel.
    let shipped = delivered(&w).await;
    let mut counter = ReturnServiceClient::new(associate());
    let err = counter
        .create_return(return_of(&shipped, &w.eshop.id, &w.lyon, true))
        .await
        .expect_err("not through the e-shop channel");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = counter
        .create_return(return_of(
            &shipped,
            &w.store_channel.id,
            &w.villeurbanne,
            true,
        ))
        .await
        .expect_err("not at another store");
    assert_eq!(err.code(), Code::PermissionDenied);
    let taken = counter
        .create_return(return_of(&shipped, &w.store_channel.id, &w.lyon, true))
        .await
        .expect("returns anywhere")
        .into_inner()
        .order_return
        .expect("return");
    counter
        .get_return(pb::GetReturnRequest {
            return_id: taken.id,
        })
        .await
        .expect("its store's return");
}

#[tokio::test]
async fn a_retried_return_in_hand_restocks_once_and_keys_belong_to_their_caller() {
    let w = World::start().await;
    let order = delivered(&w).await;
    let mut counter = w.returns_at(&w.lyon);
    let request = return_of(&order, &w.store_channel.id, &w.lyon, true);
    let first = counter
        .create_return(request.clone())
        .await
        .expect("returned")
        .into_inner()
        .order_return
        .expect("return");
    // The retry (as after a lost answer) replays the first return and moves no more stock.
    let again = counter
        .create_return(request.clone())
        .await
        .expect("replayed")
        .into_inner()
        .order_return
        .expect("return");
    assert_eq!(again.id, first.id);
    assert_eq!(w.level(&w.lyon, &w.tee_m).await, (1, 0));

    // Another caller with the same key makes its own return: keys are per caller.
    let other = w
        .returns_at(&w.lyon)
        .create_return(request)
        .await
        .expect("a different caller's key")
        .into_inner()
        .order_return
        .expect("return");
    assert_ne!(other.id, first.id);
    assert_eq!(w.level(&w.lyon, &w.tee_m).await, (2, 0));
}

#[tokio::test]
async fn channel_managers_set_the_sourcing_of_their_own_channels() {
    let w = World::start().await;
    let mut sourcing =
        SourcingServiceClient::new(scoped(&w, &[Role::ChannelManager], &[&w.eshop.id], &[]));
    let config = |channel: &str| pb::SetSourcingConfigRequest {
        config: Some(pb::SourcingConfig {
            channel_id: channel.to_owned(),
            strategy: pb::SourcingStrategy::DrainOverstock as i32,
            ..Default::default()
        }),
    };
    let err = sourcing
        .set_sourcing_config(config(&w.livestream.id))
        .await
        .expect_err("another channel");
    assert_eq!(err.code(), Code::PermissionDenied);
    sourcing
        .set_sourcing_config(config(&w.eshop.id))
        .await
        .expect("its own channel");

    // It reads and previews its own channels' sourcing only.
    sourcing
        .get_sourcing_config(pb::GetSourcingConfigRequest {
            channel_id: w.eshop.id.clone(),
        })
        .await
        .expect("its own channel's config");
    let err = sourcing
        .get_sourcing_config(pb::GetSourcingConfigRequest {
            channel_id: w.livestream.id.clone(),
        })
        .await
        .expect_err("another channel's config");
    assert_eq!(err.code(), Code::PermissionDenied);
    w.sourcing()
        .set_sourcing_config(config(&w.livestream.id))
        .await
        .expect("the livestream's config, by an admin");
    let listed: Vec<String> = sourcing
        .list_sourcing_configs(pb::ListSourcingConfigsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .configs
        .into_iter()
        .map(|c| c.channel_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&w.eshop.id));
    let err = sourcing
        .preview_sourcing(pb::PreviewSourcingRequest {
            channel_id: w.livestream.id.clone(),
            lines: vec![line(&w.tee_m, 1)],
            delivery: ship_to(home_villeurbanne()),
            ..Default::default()
        })
        .await
        .expect_err("another channel's sourcing");
    assert_eq!(err.code(), Code::PermissionDenied);
}
