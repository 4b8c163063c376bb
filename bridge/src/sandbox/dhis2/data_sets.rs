//! `GET /api/dataSets/{id}`: a data set with its period type and data
//! elements (ids and codes), the shape reconciliation asks for
//! (`fields=id,periodType,dataSetElements[dataElement[id,code]]`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{Dhis2State, gate, web_message};

/// The data set, or DHIS2's 404 WebMessage.
pub(super) async fn data_set(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let id = req.match_info().get("id").unwrap_or_default();
    let id = id.strip_suffix(".json").unwrap_or(id);
    let md = &state.metadata;
    let Some(ds) = md.data_sets.get(id) else {
        return web_message(
            StatusCode::NOT_FOUND,
            "ERROR",
            &format!("DataSet with id {id} could not be found."),
            None,
        );
    };
    let elements: Vec<Value> = ds
        .data_elements
        .iter()
        .map(|de| {
            let code = md
                .de_index
                .get(de)
                .and_then(|i| md.data_elements.get(*i))
                .and_then(|d| d.named.code.clone());
            match code {
                Some(code) => json!({"dataElement": {"id": de, "code": code}}),
                None => json!({"dataElement": {"id": de}}),
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "id": id,
        "periodType": ds.period_type,
        "dataSetElements": elements,
    }))
}
