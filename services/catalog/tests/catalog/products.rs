//! Channels, categories, products and SKUs through the contract: a small retailer's catalog,
//! search, bad input and optimistic concurrency.

use omni_proto::common::ChannelKind;
use omni_proto::omni::catalog::v1 as pb;
use tonic::Code;

use crate::support::{
    Catalog, bad_ean, category, channel, ean, eur, fields, list, minor, preconditions, product,
    product_spec, retailer, sku_spec, start, upc,
};

async fn search(c: &Catalog, req: pb::SearchProductsRequest) -> pb::SearchProductsResponse {
    c.products()
        .search_products(req)
        .await
        .expect("search")
        .into_inner()
}

fn names(r: &pb::SearchProductsResponse) -> Vec<String> {
    let mut n: Vec<String> = r.products.iter().map(|p| p.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn a_small_retailers_catalog_is_created_and_found_everywhere() {
    let c = start().await;
    let r = retailer(&c).await;
    assert_eq!(r.skus().len(), 20);

    let all = c
        .channels()
        .list_channels(pb::ListChannelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.channels.len(), 5);
    let stores = c
        .channels()
        .list_channels(pb::ListChannelsRequest {
            kind: ChannelKind::Store as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .channels;
    assert_eq!(stores.len(), 2);
    assert!(stores.iter().all(|s| !s.store_location_id.is_empty()));
    assert!(stores.iter().any(|s| s.id == r.store_paris.id));
    let got = c
        .channels()
        .get_channel(pb::GetChannelRequest {
            channel_id: r.store_lyon.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!(got.store_location_id, r.store_lyon.store_location_id);

    // The category tree: paths from the root; recursive listing finds the grandchildren.
    assert_eq!(
        r.shirts.path,
        vec![r.apparel.id.clone(), r.shirts.id.clone()]
    );
    let under_apparel = c
        .products()
        .list_categories(pb::ListCategoriesRequest {
            parent_id: r.apparel.id.clone(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .categories;
    assert_eq!(under_apparel.len(), 2);
    let roots = c
        .products()
        .list_categories(pb::ListCategoriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .categories;
    assert_eq!(roots.len(), 2);

    // One SKU, the same by id, code and barcode, with its e-shop listing.
    let oxford_m = r.sku("SHIRT-OX-M");
    for key in [
        pb::get_sku_request::Key::SkuId(oxford_m.id.clone()),
        pb::get_sku_request::Key::SkuCode("SHIRT-OX-M".into()),
        pb::get_sku_request::Key::Barcode(oxford_m.barcode.clone()),
    ] {
        let got = c
            .products()
            .get_sku(pb::GetSkuRequest {
                key: Some(key),
                channel_id: r.eshop.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let sku = got.sku.unwrap();
        assert_eq!(sku.id, oxford_m.id);
        assert_eq!(sku.product_name, "Oxford shirt");
        assert_eq!(sku.category_id, r.shirts.id);
        assert_eq!(
            sku.variant_attributes.get("size").map(String::as_str),
            Some("M")
        );
        assert_eq!(minor(&got.listing.unwrap().price), 2990);
    }
    // Not listed on the livestream: no listing.
    let got = c
        .products()
        .get_sku(pb::GetSkuRequest {
            key: Some(pb::get_sku_request::Key::SkuId(oxford_m.id.clone())),
            channel_id: r.livestream.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.listing.is_none());

    // Batch reads keep the order asked and name the unknown ids.
    let ids: Vec<String> = r.skus().iter().rev().map(|s| s.id.clone()).collect();
    let batch = c
        .products()
        .batch_get_skus(pb::BatchGetSkusRequest {
            sku_ids: ids.clone(),
            channel_id: r.eshop.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch.skus.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(batch.listings.len(), 20);
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = c
        .products()
        .batch_get_skus(pb::BatchGetSkusRequest {
            sku_ids: vec![oxford_m.id.clone(), unknown.clone()],
            channel_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["sku_ids[1]"]);
    assert!(err.message().contains(&unknown));

    // Search: text (name, brand, SKU code), category with descendants, channel, status.
    let by_text = search(
        &c,
        pb::SearchProductsRequest {
            query: "shirt".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&by_text), ["Linen shirt", "Oxford shirt"]);
    assert_eq!(by_text.total_size, 2);
    let by_code = search(
        &c,
        pb::SearchProductsRequest {
            query: "shoe-tr".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&by_code), ["Trail runner"]);
    let apparel = search(
        &c,
        pb::SearchProductsRequest {
            category_id: r.apparel.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(apparel.products.len(), 4);
    assert!(apparel.products.iter().all(|p| p.skus.len() == 4));
    list(&c, &r.sku("HOME-TH-S").id, &r.livestream.id, 4990).await;
    let on_livestream = search(
        &c,
        pb::SearchProductsRequest {
            channel_id: r.livestream.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&on_livestream), ["Cotton throw"]);
    let drafts = search(
        &c,
        pb::SearchProductsRequest {
            status: pb::ProductStatus::Draft as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(drafts.products.is_empty());

    // Paging walks every product once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = search(
            &c,
            pb::SearchProductsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(page.total_size, 5);
        seen.extend(page.products.iter().map(|p| p.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);

    // Every change left its event in the outbox.
    assert_eq!(c.events("catalog.channel_changed").await, 5);
    assert_eq!(c.events("catalog.product_changed").await, 5);
    assert_eq!(c.events("catalog.listing_changed").await, 21);
    assert_eq!(c.events("catalog.price_changed").await, 21);
}

#[tokio::test]
async fn bad_sku_input_gets_its_own_status_and_writes_nothing() {
    let c = start().await;
    let cat = category(&c, "", "Shirts").await;
    let p = product(
        &c,
        product_spec("Oxford", "Maison", &cat.id),
        vec![sku_spec("OX-1", &ean(1), 2990, 1200)],
    )
    .await;
    let skus_before = c.count("SELECT count(*) FROM skus").await;
    let events_before = c.count("SELECT count(*) FROM outbox").await;
    let create = |sku: pb::Sku| pb::CreateSkuRequest {
        idempotency_key: String::new(),
        sku: Some(pb::Sku {
            product_id: p.id.clone(),
            ..sku
        }),
    };

    let err = c
        .products()
        .create_sku(create(sku_spec("OX-2", &bad_ean(2), 2990, 1200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["sku.barcode"]);
    assert!(err.message().contains("check digit"));

    let err = c
        .products()
        .create_sku(create(sku_spec("OX-1", &ean(2), 2990, 1200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fields(&err), ["sku_code"]);

    // The same article as a UPC-A (its EAN-13 without the leading zero) is the same barcode.
    let as_ean = format!("0{}", upc(3));
    c.products()
        .create_sku(create(sku_spec("OX-3", &as_ean, 2990, 1200)))
        .await
        .expect("a 13-digit code starting with 0");
    let err = c
        .products()
        .create_sku(create(sku_spec("OX-4", &upc(3), 2990, 1200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fields(&err), ["barcode"]);

    let err = c
        .products()
        .create_sku(create(sku_spec("OX-5", &ean(5), -1, 1200)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["sku.list_price.minor_units"]);

    let err = c
        .products()
        .create_sku(pb::CreateSkuRequest {
            idempotency_key: String::new(),
            sku: Some(pb::Sku {
                product_id: uuid::Uuid::now_v7().to_string(),
                ..sku_spec("OX-6", &ean(6), 100, 50)
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["sku.product_id"]);

    // Duplicates inside one CreateProduct, and every field problem reported together.
    let err = c
        .products()
        .create_product(pb::CreateProductRequest {
            idempotency_key: String::new(),
            product: Some(product_spec("Twin", "Maison", &cat.id)),
            skus: vec![
                sku_spec("TW-1", &ean(7), 100, 50),
                sku_spec("TW-2", &ean(7), 100, 50),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fields(&err), ["skus[1].barcode"]);
    let err = c
        .products()
        .create_product(pb::CreateProductRequest {
            idempotency_key: String::new(),
            product: Some(pb::Product {
                name: String::new(),
                ..product_spec("x", "y", "not-a-uuid")
            }),
            skus: vec![sku_spec("bad code!", &bad_ean(8), -5, 50)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let f = fields(&err);
    for wanted in [
        "product.name",
        "product.category_id",
        "skus[0].sku_code",
        "skus[0].barcode",
        "skus[0].list_price.minor_units",
    ] {
        assert!(f.iter().any(|x| x == wanted), "{wanted} in {f:?}");
    }

    assert_eq!(c.count("SELECT count(*) FROM skus").await, skus_before + 1);
    // Only the one SKU that was created emitted an event.
    assert_eq!(
        c.count("SELECT count(*) FROM outbox").await,
        events_before + 1
    );

    // Channels: a store's inventory location is a location id; other kinds have none.
    let err = c
        .channels()
        .create_channel(pb::CreateChannelRequest {
            idempotency_key: String::new(),
            channel: Some(pb::Channel {
                kind: ChannelKind::Store as i32,
                name: "Store".into(),
                currency: "EUR".into(),
                store_location_id: "LYS-01".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["channel.store_location_id"]);
    let err = c
        .channels()
        .create_channel(pb::CreateChannelRequest {
            idempotency_key: String::new(),
            channel: Some(pb::Channel {
                kind: ChannelKind::EShop as i32,
                name: "Web".into(),
                currency: "euro".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["channel.currency"]);
    assert_eq!(c.count("SELECT count(*) FROM channels").await, 0);
}

#[tokio::test]
async fn retried_creates_with_one_idempotency_key_create_once() {
    let c = start().await;
    let req = pb::CreateChannelRequest {
        idempotency_key: "create-web-1".into(),
        channel: Some(pb::Channel {
            kind: ChannelKind::EShop as i32,
            name: "Web".into(),
            currency: "EUR".into(),
            active: true,
            ..Default::default()
        }),
    };
    let first = c
        .channels()
        .create_channel(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = c
        .channels()
        .create_channel(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.channel.unwrap().id, again.channel.unwrap().id);
    assert_eq!(c.count("SELECT count(*) FROM channels").await, 1);
    let mut other = req;
    other.channel.as_mut().unwrap().name = "Other".into();
    let err = c.channels().create_channel(other).await.unwrap_err();
    assert_eq!(fields(&err), ["idempotency_key"]);
}

#[tokio::test]
async fn stale_versions_are_refused_and_concurrent_editors_never_both_win() {
    let c = start().await;
    let cat = category(&c, "", "Shirts").await;
    let p = product(
        &c,
        product_spec("Oxford", "Maison", &cat.id),
        vec![sku_spec("OX-1", &ean(1), 2990, 1200)],
    )
    .await;
    let sku = p.skus[0].clone();
    assert_eq!(sku.version, 1);

    let updated = c
        .products()
        .update_sku(pb::UpdateSkuRequest {
            sku: Some(pb::Sku {
                unit_cost: eur(1300),
                ..sku.clone()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .sku
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(minor(&updated.unit_cost), 1300);

    // The second editor still holds version 1.
    let err = c
        .products()
        .update_sku(pb::UpdateSkuRequest {
            sku: Some(pb::Sku {
                unit_cost: eur(999),
                ..sku.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        preconditions(&err),
        [("VERSION".to_owned(), format!("sku/{}", sku.id))]
    );
    let cost: i64 = sqlx::query_scalar("SELECT unit_cost FROM skus WHERE id = $1::uuid")
        .bind(&sku.id)
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(cost, 1300);

    // A SKU stays with its product.
    let err = c
        .products()
        .update_sku(pb::UpdateSkuRequest {
            sku: Some(pb::Sku {
                product_id: uuid::Uuid::now_v7().to_string(),
                ..updated.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["sku.product_id"]);

    // Eight editors update the product from the same version at once: exactly one wins.
    let attempts = (0..8).map(|i| {
        let mut client = c.products();
        let mut edit = p.clone();
        edit.description = format!("edit {i}");
        edit.skus.clear();
        async move {
            client
                .update_product(pb::UpdateProductRequest {
                    product: Some(edit),
                })
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::FailedPrecondition);
    }
    let (version, description): (i64, String) =
        sqlx::query_as("SELECT version, description FROM products WHERE id = $1::uuid")
            .bind(&p.id)
            .fetch_one(&c.db)
            .await
            .unwrap();
    assert_eq!(version, 2);
    let winner = won[0].as_ref().unwrap().get_ref().product.clone().unwrap();
    assert_eq!(winner.description, description);
    assert_eq!(winner.version, 2);

    // Channels too.
    let ch = channel(&c, ChannelKind::EShop, "Web", "").await;
    let err = c
        .channels()
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(pb::Channel {
                name: "Web 2".into(),
                version: 7,
                ..ch.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let renamed = c
        .channels()
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(pb::Channel {
                name: "Web 2".into(),
                ..ch.clone()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    assert_eq!((renamed.name.as_str(), renamed.version), ("Web 2", 2));
}

/// Reads the catalog's event stream until `at_least` events arrived (a blocking read wakes as
/// the relay appends them).
async fn stream_events(c: &Catalog, at_least: usize) -> Vec<omni_proto::events::Event> {
    use prost::Message as _;
    let key = format!("{}omni:events:{{catalog}}", c.svc.redis_prefix());
    let mut conn = omni_runtime::redis::Redis::new(&omni_testkit::redis_url(), "")
        .expect("a redis URL")
        .conn();
    let mut events = Vec::new();
    let mut last = "0-0".to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while events.len() < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} events were published",
            events.len()
        );
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(2000)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut conn)
            .await
            .expect("XREAD");
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                last = entry.id.clone();
                let bytes: Vec<u8> = entry.get("event").expect("an event field");
                events.push(
                    omni_proto::events::Event::decode(bytes.as_slice()).expect("an encoded Event"),
                );
            }
        }
    }
    events
}

#[tokio::test]
async fn changes_are_published_as_events_through_the_outbox() {
    use omni_proto::events::event::Payload;
    let c = start().await;
    let web = channel(&c, ChannelKind::EShop, "Web", "").await;
    let apparel = category(&c, "", "Apparel").await;
    let shirts = category(&c, &apparel.id, "Shirts").await;
    let p = product(
        &c,
        product_spec("Oxford", "Maison", &shirts.id),
        vec![
            sku_spec("OX-S", &ean(1), 2990, 1200),
            sku_spec("OX-M", &ean(2), 2990, 1200),
        ],
    )
    .await;
    let sku = &p.skus[0];
    c.pricing()
        .set_listing(pb::SetListingRequest {
            listing: Some(pb::Listing {
                sku_id: sku.id.clone(),
                channel_id: web.id.clone(),
                price: eur(2392),
                listed: true,
                price_exception: Some(pb::PriceException {
                    reason: "launch".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    let events = stream_events(&c, 4).await;
    assert!(
        events
            .iter()
            .all(|e| e.source == "catalog" && !e.actor_id.is_empty())
    );
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "catalog.channel_changed",
            "catalog.product_changed",
            "catalog.listing_changed",
            "catalog.price_changed"
        ]
    );
    let Some(Payload::ProductChanged(changed)) = &events[1].payload else {
        panic!("a ProductChanged");
    };
    assert_eq!(events[1].aggregate_id, p.id);
    assert!(changed.created);
    assert_eq!(
        changed.category_path,
        [apparel.id.clone(), shirts.id.clone()]
    );
    assert_eq!(changed.skus.len(), 2);
    assert_eq!(changed.changed_sku_ids.len(), 2);
    let Some(Payload::ListingChanged(listing)) = &events[2].payload else {
        panic!("a ListingChanged");
    };
    assert!(listing.created && listing.listed);
    assert_eq!(listing.channel_id, web.id);
    let Some(Payload::PriceChanged(price)) = &events[3].payload else {
        panic!("a PriceChanged");
    };
    assert_eq!(events[3].aggregate_id, sku.id);
    assert!(price.old_price.is_none());
    assert_eq!(minor(&price.new_price), 2392);
    assert_eq!(minor(&price.list_price), 2990);
    assert_eq!(price.deviation_bps, -2000);
    assert!(price.under_exception);
}

#[tokio::test]
async fn a_store_channel_is_created_before_its_location_and_linked_later() {
    let c = start().await;
    let created = c
        .channels()
        .create_channel(pb::CreateChannelRequest {
            idempotency_key: String::new(),
            channel: Some(pb::Channel {
                kind: ChannelKind::Store as i32,
                name: "Store Lyon".into(),
                currency: "EUR".into(),
                active: true,
                ..Default::default()
            }),
        })
        .await
        .expect("a store channel without its location yet")
        .into_inner()
        .channel
        .expect("channel");
    assert_eq!(created.store_location_id, "");
    // Inventory creates the location with this channel's id; the channel then links to it.
    let location = uuid::Uuid::now_v7().to_string();
    let linked = c
        .channels()
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(pb::Channel {
                store_location_id: location.clone(),
                ..created
            }),
        })
        .await
        .expect("linked")
        .into_inner()
        .channel
        .expect("channel");
    assert_eq!(linked.store_location_id, location);
}
