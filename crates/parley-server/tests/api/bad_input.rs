//! Bad input gets a 4xx with a stable code, never a panic or a 500, and changes nothing.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

async fn raw(
    c: &Client,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = c
        .http
        .request(method, format!("{}{path}", c.base))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(t) = c.csrf.lock().unwrap().clone() {
        req = req.header("x-csrf-token", t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let v: serde_json::Value = res.json().await.unwrap_or_default();
    (status, v["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let t = TestApp::spawn(Db::Sqlite).await;
    let acme = t.tenant("Acme").await;
    let c = t.admin(&acme).await;
    assert_eq!(
        c.post("/api/departments", json!({ "name": "Sales" }))
            .await
            .status,
        StatusCode::CREATED
    );
    let post = reqwest::Method::POST;
    let json_ct = Some("application/json");

    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            format!("{{\"name\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes(),
            json_ct,
            413,
            "payload_too_large",
        ),
        (b"{\"name\": 5}".to_vec(), json_ct, 422, "invalid_body"),
        (
            b"{\"name\": \"A\", \"admin\": true}".to_vec(),
            json_ct,
            422,
            "invalid_body",
        ),
        (b"{}".to_vec(), json_ct, 422, "invalid_body"),
        (b"[]".to_vec(), json_ct, 422, "invalid_body"),
        (b"{\"name\": ".to_vec(), json_ct, 400, "malformed_json"),
        (
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
            json_ct,
            400,
            "malformed_json",
        ),
        (
            b"name=Sales".to_vec(),
            Some("application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (
            b"{\"name\": \"Sales\"}".to_vec(),
            None,
            415,
            "unsupported_media_type",
        ),
        (
            format!("{{\"name\":\"{}\"}}", "y".repeat(10_000)).into_bytes(),
            json_ct,
            422,
            "too_long",
        ),
        (
            b"{\"name\": \"a\\u0000b\"}".to_vec(),
            json_ct,
            422,
            "invalid_characters",
        ),
        (b"{\"name\": \"   \"}".to_vec(), json_ct, 422, "required"),
    ];
    for (body, ct, status, code) in cases {
        let preview = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let (s, c2) = raw(&c, post.clone(), "/api/departments", ct, body).await;
        assert_eq!((s.as_u16(), c2.as_str()), (status, code), "{preview}");
    }

    let user = |v: serde_json::Value| async { c.post("/api/users", v).await };
    assert_eq!(
        user(json!({ "email": "a@acme.test", "display_name": "A", "role": "root" }))
            .await
            .code(),
        "invalid_role"
    );
    assert_eq!(
        user(
            json!({ "email": "a@acme.test", "display_name": "A", "role": "agent", "capacity": 0 })
        )
        .await
        .code(),
        "out_of_range"
    );
    assert_eq!(
        user(json!({ "email": "not-an-email", "display_name": "A", "role": "agent" }))
            .await
            .code(),
        "invalid_email"
    );
    assert_eq!(user(json!({ "email": "a@acme.test", "display_name": "A", "role": "agent", "department_ids": ["x"] })).await.code(), "unknown_department");
    assert_eq!(
        user(
            json!({ "email": "a@acme.test", "display_name": "A", "role": "agent", "capacity": "3" })
        )
        .await
        .code(),
        "invalid_body"
    );

    assert_eq!(
        c.get("/api/users/not-a-uuid").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get("/api/users/00000000-0000-0000-0000-000000000000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(c.get("/api/no/such/route").await.code(), "not_found");
    let r = c.send("DELETE", "/api/site", None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_eq!(c.get("/api/audit?limit=abc").await.code(), "invalid_query");
    assert_eq!(
        c.get("/api/audit?limit=-5").await.status,
        StatusCode::OK,
        "clamped"
    );

    let anon = t.client();
    let big = anon
        .sign_in(&acme.slug, &acme.admin_email, &"p".repeat(5000))
        .await;
    assert_eq!(
        (big.status, big.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "too_long")
    );

    // Nothing above changed any data, and the node is still healthy.
    let depts = c.get("/api/departments").await;
    assert_eq!(depts.body["departments"].as_array().unwrap().len(), 1);
    assert_eq!(
        c.get("/api/users").await.body["users"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    t.stop().await;
}
