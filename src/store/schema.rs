//! Diesel's view of the tables; the same on both backends (`migrations/sqlite` and
//! `migrations/postgresql` create them with the matching SQL types).

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Nullable<Text>,
        key_hash -> Binary,
        created_at -> BigInt,
    }
}

diesel::table! {
    secrets (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        display_name -> Nullable<Text>,
        cache_ttl_secs -> BigInt,
        version -> BigInt,
        key_id -> Text,
        nonce -> Binary,
        ciphertext -> Binary,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    rules (id) {
        id -> Text,
        tenant_id -> Text,
        runtime -> Text,
        host_pattern -> Text,
        path_pattern -> Nullable<Text>,
        credential -> Text,
        header -> Nullable<Text>,
        param -> Nullable<Text>,
        value_template -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    runtime_tokens (id) {
        id -> Text,
        tenant_id -> Text,
        runtime -> Text,
        token_hash -> Binary,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Text,
        seq -> BigInt,
        occurred_at -> BigInt,
        tenant_id -> Nullable<Text>,
        actor -> Text,
        action -> Text,
        target_kind -> Text,
        target_id -> Nullable<Text>,
        target_name -> Nullable<Text>,
        request_id -> Nullable<Text>,
        outcome -> Text,
        prev_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    audit_chain (id) {
        id -> Integer,
        last_seq -> BigInt,
        last_hash -> Text,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::allow_tables_to_appear_in_same_query!(tenants, api_keys, secrets, rules, runtime_tokens);
