//! ChannelService and ProductService.

use omni_proto::common::ChannelKind;
use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::channel_service_server::ChannelService;
use omni_proto::omni::catalog::v1::product_service_server::ProductService;
use omni_runtime::auth;
use omni_runtime::error::Violations;
use omni_runtime::paging;
use tonic::{Request, Response};
use uuid::Uuid;

use super::{
    ADMIN, ANY_ROLE, EDITORS, Grpc, GrpcResult, attributes, category_pb, channel_pb, finish, idem,
    internal, json_attributes, listing_pb, money_in, opt_uuid, page, sku_pb, sku_view_pb, status,
    timestamp, token_id, uuid,
};
use crate::app::{ChannelInput, Product, ProductInput, SkuInput, SkuKey};
use crate::domain::{self, Barcode};
use crate::store::ProductSearch;

fn channel_input(v: &mut Violations, c: &pb::Channel) -> Option<ChannelInput> {
    let kind = match ChannelKind::try_from(c.kind) {
        Ok(ChannelKind::Unspecified) => {
            v.add("channel.kind", "is required");
            None
        }
        Ok(kind) => Some(kind),
        Err(_) => {
            v.add(
                "channel.kind",
                format!("{} is not a known channel kind", c.kind),
            );
            None
        }
    };
    let name = v.check("channel.name", domain::parse_name(&c.name, 200));
    let currency = v.check("channel.currency", domain::parse_currency(&c.currency));
    let store_location_id = c.store_location_id.trim().to_owned();
    match kind {
        // A store channel may be created before its inventory location and linked later
        // (UpdateChannel), so neither has to invent the other's id.
        Some(ChannelKind::Store) if !store_location_id.is_empty() => {
            if let Err(e) = uuid(&store_location_id) {
                v.add(
                    "channel.store_location_id",
                    format!("{e}: a store channel links to its inventory location"),
                );
            }
        }
        Some(ChannelKind::Store) => {}
        Some(_) if !store_location_id.is_empty() => {
            v.add(
                "channel.store_location_id",
                "only store channels link to a location",
            );
        }
        _ => {}
    }
    Some(ChannelInput {
        kind: kind? as i16,
        name: name?,
        store_location_id,
        currency: currency?,
        active: c.active,
    })
}

fn status_of<E: TryFrom<i32> + PartialEq>(
    v: &mut Violations,
    field: &str,
    raw: i32,
    unspecified: E,
) -> Option<i16> {
    match E::try_from(raw) {
        Ok(s) if s == unspecified => {
            v.add(field, "is required");
            None
        }
        Ok(_) => i16::try_from(raw).ok(),
        Err(_) => {
            v.add(field, format!("{raw} is not a known status"));
            None
        }
    }
}

fn product_input(v: &mut Violations, p: &pb::Product) -> Option<ProductInput> {
    let name = v.check("product.name", domain::parse_name(&p.name, 300));
    let category_id = v.check("product.category_id", uuid(&p.category_id));
    let status = status_of(
        v,
        "product.status",
        p.status,
        pb::ProductStatus::Unspecified,
    );
    for (i, url) in p.media_urls.iter().enumerate() {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            v.add(format!("product.media_urls[{i}]"), "must be an http(s) URL");
        }
    }
    let attributes = attributes(v, "product.attributes", &p.attributes);
    Some(ProductInput {
        name: name?,
        brand: p.brand.trim().to_owned(),
        category_id: category_id?,
        description: p.description.clone(),
        media_urls: p.media_urls.clone(),
        attributes,
        status: status?,
    })
}

fn sku_input(v: &mut Violations, field: &str, s: &pb::Sku) -> Option<SkuInput> {
    let code = v.check(
        &format!("{field}.sku_code"),
        domain::parse_sku_code(&s.sku_code),
    );
    let barcode = v.check(&format!("{field}.barcode"), Barcode::parse(&s.barcode));
    let list = money_in(v, &format!("{field}.list_price"), s.list_price.as_ref());
    let cost = money_in(v, &format!("{field}.unit_cost"), s.unit_cost.as_ref());
    let status = status_of(
        v,
        &format!("{field}.status"),
        s.status,
        pb::SkuStatus::Unspecified,
    );
    let variant_attributes = attributes(
        v,
        &format!("{field}.variant_attributes"),
        &s.variant_attributes,
    );
    let (list_price, currency) = list?;
    let (unit_cost, cost_currency) = cost?;
    Some(SkuInput {
        sku_code: code?,
        barcode: barcode?.as_str().to_owned(),
        variant_attributes,
        list_price,
        currency,
        unit_cost,
        cost_currency,
        status: status?,
    })
}

fn product_pb(p: Product) -> pb::Product {
    let name = p.row.name.clone();
    let category = p.row.category_id.to_string();
    pb::Product {
        id: p.row.id.to_string(),
        name: p.row.name,
        brand: p.row.brand,
        category_id: p.row.category_id.to_string(),
        description: p.row.description,
        media_urls: p.row.media_urls,
        attributes: json_attributes(&p.row.attributes),
        status: i32::from(p.row.status),
        version: p.row.version,
        skus: p
            .skus
            .into_iter()
            .map(|s| sku_pb(s, name.clone(), category.clone()))
            .collect(),
        created_at: timestamp(p.row.created_at),
        updated_at: timestamp(p.row.updated_at),
    }
}

#[tonic::async_trait]
impl ChannelService for Grpc {
    async fn create_channel(
        &self,
        request: Request<pb::CreateChannelRequest>,
    ) -> GrpcResult<pb::CreateChannelResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(ADMIN)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let input = match &req.channel {
            Some(c) => channel_input(&mut v, c),
            None => {
                v.add("channel", "is required");
                None
            }
        };
        finish(v)?;
        let input = input.ok_or_else(|| internal("channel"))?;
        let key = idem(
            &actor.id,
            "catalog.create_channel",
            &req.idempotency_key,
            &req,
        );
        let row = self
            .app
            .create_channel(input, key.as_ref(), &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateChannelResponse {
            channel: Some(channel_pb(row)),
        }))
    }

    async fn update_channel(
        &self,
        request: Request<pb::UpdateChannelRequest>,
    ) -> GrpcResult<pb::UpdateChannelResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(ADMIN)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(c) = req.channel else {
            v.add("channel", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("channel")));
        };
        let id = v.check("channel.id", uuid(&c.id));
        let input = channel_input(&mut v, &c);
        finish(v)?;
        let (Some(id), Some(input)) = (id, input) else {
            return Err(internal("channel"));
        };
        let row = self
            .app
            .update_channel(id, c.version, input, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateChannelResponse {
            channel: Some(channel_pb(row)),
        }))
    }

    async fn get_channel(
        &self,
        request: Request<pb::GetChannelRequest>,
    ) -> GrpcResult<pb::GetChannelResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let id =
            uuid(&req.channel_id).map_err(|e| omni_runtime::Error::invalid("channel_id", e))?;
        let row = self.app.get_channel(id).await.map_err(status)?;
        Ok(Response::new(pb::GetChannelResponse {
            channel: Some(channel_pb(row)),
        }))
    }

    async fn list_channels(
        &self,
        request: Request<pb::ListChannelsRequest>,
    ) -> GrpcResult<pb::ListChannelsResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let kind = match ChannelKind::try_from(req.kind) {
            Ok(ChannelKind::Unspecified) => None,
            Ok(k) => Some(k as i16),
            Err(_) => {
                v.add("kind", "is not a known channel kind");
                None
            }
        };
        let size = page(&mut v, req.page_size);
        let after = token_id(&mut v, &req.page_token);
        finish(v)?;
        let rows = self
            .app
            .list_channels(kind, req.include_inactive, after, size)
            .await
            .map_err(status)?;
        let next = paging::next_token(rows.len(), size, rows.last().map(|r| r.id.to_string()));
        Ok(Response::new(pb::ListChannelsResponse {
            channels: rows.into_iter().map(channel_pb).collect(),
            next_page_token: next,
        }))
    }
}

#[tonic::async_trait]
impl ProductService for Grpc {
    async fn create_category(
        &self,
        request: Request<pb::CreateCategoryRequest>,
    ) -> GrpcResult<pb::CreateCategoryResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let parent = v.check("parent_id", opt_uuid(&req.parent_id));
        let name = v.check("name", domain::parse_name(&req.name, 200));
        finish(v)?;
        let (Some(parent), Some(name)) = (parent, name) else {
            return Err(internal("category"));
        };
        let key = idem(
            &actor.id,
            "catalog.create_category",
            &req.idempotency_key,
            &req,
        );
        let row = self
            .app
            .create_category(parent, name, key.as_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateCategoryResponse {
            category: Some(category_pb(row)),
        }))
    }

    async fn list_categories(
        &self,
        request: Request<pb::ListCategoriesRequest>,
    ) -> GrpcResult<pb::ListCategoriesResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let parent = v.check("parent_id", opt_uuid(&req.parent_id));
        let size = page(&mut v, req.page_size);
        let after = token_id(&mut v, &req.page_token);
        finish(v)?;
        let rows = self
            .app
            .list_categories(parent.flatten(), req.recursive, after, size)
            .await
            .map_err(status)?;
        let next = paging::next_token(rows.len(), size, rows.last().map(|r| r.id.to_string()));
        Ok(Response::new(pb::ListCategoriesResponse {
            categories: rows.into_iter().map(category_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> GrpcResult<pb::CreateProductResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let input = match &req.product {
            Some(p) => product_input(&mut v, p),
            None => {
                v.add("product", "is required");
                None
            }
        };
        let mut skus = Vec::new();
        for (i, s) in req.skus.iter().enumerate() {
            if let Some(sku) = sku_input(&mut v, &format!("skus[{i}]"), s) {
                skus.push(sku);
            }
        }
        finish(v)?;
        // Duplicates inside the request would otherwise surface as a bare unique violation.
        for (i, s) in skus.iter().enumerate() {
            if skus[..i].iter().any(|o| o.sku_code == s.sku_code) {
                return Err(omni_runtime::Error::already_exists(
                    format!("skus[{i}].sku_code"),
                    "is given twice",
                )
                .into());
            }
            if skus[..i].iter().any(|o| o.barcode == s.barcode) {
                return Err(omni_runtime::Error::already_exists(
                    format!("skus[{i}].barcode"),
                    "is given twice",
                )
                .into());
            }
        }
        let input = input.ok_or_else(|| internal("product"))?;
        let key = idem(
            &actor.id,
            "catalog.create_product",
            &req.idempotency_key,
            &req,
        );
        let product = self
            .app
            .create_product(input, skus, key.as_ref(), &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> GrpcResult<pb::UpdateProductResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(p) = req.product else {
            v.add("product", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("product")));
        };
        let id = v.check("product.id", uuid(&p.id));
        let input = product_input(&mut v, &p);
        finish(v)?;
        let (Some(id), Some(input)) = (id, input) else {
            return Err(internal("product"));
        };
        let product = self
            .app
            .update_product(id, p.version, input, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> GrpcResult<pb::GetProductResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let id =
            uuid(&req.product_id).map_err(|e| omni_runtime::Error::invalid("product_id", e))?;
        let product = self.app.get_product(id).await.map_err(status)?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product_pb(product)),
        }))
    }

    async fn search_products(
        &self,
        request: Request<pb::SearchProductsRequest>,
    ) -> GrpcResult<pb::SearchProductsResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let category_id = v.check("category_id", opt_uuid(&req.category_id)).flatten();
        let channel_id = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        let product_status = match pb::ProductStatus::try_from(req.status) {
            Ok(pb::ProductStatus::Unspecified) => None,
            Ok(_) => i16::try_from(req.status).ok(),
            Err(_) => {
                v.add("status", "is not a known status");
                None
            }
        };
        if req.query.chars().count() > 200 {
            v.add("query", "must be at most 200 characters");
        }
        let size = page(&mut v, req.page_size);
        let after = token_id(&mut v, &req.page_token);
        finish(v)?;
        let search = ProductSearch {
            text: Some(req.query.trim().to_owned()).filter(|q| !q.is_empty()),
            category_id,
            channel_id,
            status: product_status,
        };
        let (products, total) = self
            .app
            .search_products(search, after, size)
            .await
            .map_err(status)?;
        let next = paging::next_token(
            products.len(),
            size,
            products.last().map(|p| p.row.id.to_string()),
        );
        Ok(Response::new(pb::SearchProductsResponse {
            products: products.into_iter().map(product_pb).collect(),
            next_page_token: next,
            total_size: total,
        }))
    }

    async fn create_sku(
        &self,
        request: Request<pb::CreateSkuRequest>,
    ) -> GrpcResult<pb::CreateSkuResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(s) = &req.sku else {
            v.add("sku", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("sku")));
        };
        let product_id = v.check("sku.product_id", uuid(&s.product_id));
        let input = sku_input(&mut v, "sku", s);
        finish(v)?;
        let (Some(product_id), Some(input)) = (product_id, input) else {
            return Err(internal("sku"));
        };
        let key = idem(&actor.id, "catalog.create_sku", &req.idempotency_key, &req);
        let view = self
            .app
            .create_sku(product_id, input, key.as_ref(), &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateSkuResponse {
            sku: Some(sku_view_pb(view)),
        }))
    }

    async fn update_sku(
        &self,
        request: Request<pb::UpdateSkuRequest>,
    ) -> GrpcResult<pb::UpdateSkuResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(s) = req.sku else {
            v.add("sku", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("sku")));
        };
        let id = v.check("sku.id", uuid(&s.id));
        let product_id = v.check("sku.product_id", opt_uuid(&s.product_id));
        let input = sku_input(&mut v, "sku", &s);
        finish(v)?;
        let (Some(id), Some(product_id), Some(input)) = (id, product_id, input) else {
            return Err(internal("sku"));
        };
        let view = self
            .app
            .update_sku(id, s.version, product_id, input, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateSkuResponse {
            sku: Some(sku_view_pb(view)),
        }))
    }

    async fn get_sku(&self, request: Request<pb::GetSkuRequest>) -> GrpcResult<pb::GetSkuResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let key = match &req.key {
            None => {
                v.add("key", "give a sku_id, sku_code or barcode");
                None
            }
            Some(pb::get_sku_request::Key::SkuId(id)) => {
                v.check("sku_id", uuid(id)).map(SkuKey::Id)
            }
            Some(pb::get_sku_request::Key::SkuCode(code)) => v
                .check("sku_code", domain::parse_sku_code(code))
                .map(SkuKey::Code),
            Some(pb::get_sku_request::Key::Barcode(b)) => v
                .check("barcode", Barcode::parse(b))
                .map(|b| SkuKey::Barcode(b.as_str().to_owned())),
        };
        let channel = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        finish(v)?;
        let key = key.ok_or_else(|| internal("key"))?;
        let (view, listing) = self.app.get_sku(&key, channel).await.map_err(status)?;
        Ok(Response::new(pb::GetSkuResponse {
            sku: Some(sku_view_pb(view)),
            listing: listing.map(listing_pb),
        }))
    }

    async fn batch_get_skus(
        &self,
        request: Request<pb::BatchGetSkusRequest>,
    ) -> GrpcResult<pb::BatchGetSkusResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.sku_ids.len() > 500 {
            v.add("sku_ids", "at most 500 at once");
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(req.sku_ids.len());
        for (i, raw) in req.sku_ids.iter().enumerate() {
            if let Some(id) = v.check(&format!("sku_ids[{i}]"), uuid(raw)) {
                ids.push(id);
            }
        }
        let channel = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        finish(v)?;
        let (views, listings) = self
            .app
            .batch_get_skus(&ids, channel)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::BatchGetSkusResponse {
            skus: views.into_iter().map(sku_view_pb).collect(),
            listings: listings.into_iter().map(listing_pb).collect(),
        }))
    }
}
