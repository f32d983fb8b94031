DROP TABLE runtime_tokens;
DROP TABLE rules;
DROP TABLE secrets;
DROP TABLE api_keys;
DROP TABLE tenants;
