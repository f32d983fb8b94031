//! Envoy configurations for runta: `runta envoy bootstrap` renders them, and the files in
//! `envoy/` are its output with default values (a test keeps them equal).
//!
//! Both modes are an HTTP forward proxy (runtimes use it as `HTTP_PROXY`; absolute-form URLs)
//! whose every request passes runta's ext_proc filter (request headers only, failing closed)
//! before a dynamic forward proxy sends it upstream over TLS, with SNI and certificate
//! validation against a CA bundle. A sidecar names its tenant and runtime in the ext_proc
//! stream's metadata; the shared gateway leaves identity to runtime tokens.
//!
//! What a runtime can never reach through it: Envoy's admin interface (a Unix socket, not a
//! port), loopback and link-local destinations (runta's own ports among them), and CONNECT
//! tunnels (which could carry anything, and cannot be injected into).

use std::fmt::Write as _;

/// Which deployment the configuration is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One Envoy per runtime: identity in the ext_proc metadata.
    Sidecar { tenant: String, runtime: String },
    /// One Envoy for many runtimes: identity from runtime tokens (proxy credentials).
    Gateway,
}

/// Where runta's ext_proc service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtprocAddress {
    /// A host name or IP address and a port.
    Tcp { host: String, port: u16 },
    /// A Unix socket path.
    Unix(String),
}

impl ExtprocAddress {
    /// `HOST:PORT` or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("'unix:' needs a socket path".into());
            }
            return Ok(Self::Unix(path.to_owned()));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("'{text}' is not HOST:PORT or unix:PATH"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{text}': the port must be a number from 1 to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("'{text}': missing or invalid host"));
        }
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

/// Everything a configuration depends on.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub mode: Mode,
    /// The proxy listener runtimes send their requests to.
    pub listen_host: String,
    pub listen_port: u16,
    pub extproc: ExtprocAddress,
    /// Sent as `authorization: Bearer ...` on every ext_proc stream.
    pub gateway_token: String,
    /// CA certificates upstream servers are validated against.
    pub ca_bundle: String,
    /// A DNS server for upstream names; `None`: the system's resolver configuration.
    pub dns_resolver: Option<(String, u16)>,
    /// Envoy's admin interface: a Unix socket, unreachable through the proxy.
    pub admin_socket: String,
    /// How long runta may take to answer one request before Envoy fails it.
    pub message_timeout_ms: u32,
}

impl Bootstrap {
    /// The defaults `envoy/*.yaml` are rendered with.
    pub fn defaults(mode: Mode) -> Self {
        let name = match &mode {
            Mode::Sidecar { .. } => "sidecar",
            Mode::Gateway => "gateway",
        };
        Self {
            mode,
            listen_host: "127.0.0.1".into(),
            listen_port: 10000,
            extproc: ExtprocAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 50051,
            },
            gateway_token: EXAMPLE_GATEWAY_TOKEN.into(),
            ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
            dns_resolver: None,
            admin_socket: format!("/tmp/runta-envoy-{name}-admin.sock"),
            message_timeout_ms: 500,
        }
    }

    /// The Envoy bootstrap configuration, as YAML.
    pub fn render(&self) -> String {
        let mut y = String::with_capacity(8 * 1024);
        let (title, metadata) = match &self.mode {
            Mode::Sidecar { tenant, runtime } => (
                format!("per-runtime sidecar of runtime '{runtime}' (tenant '{tenant}')"),
                format!(
                    "                - {{ key: x-runta-tenant, value: {} }}\n                - {{ key: x-runta-runtime, value: {} }}\n",
                    yaml_str(tenant),
                    yaml_str(runtime)
                ),
            ),
            Mode::Gateway => (
                "shared edge gateway (runtimes identify with runtime tokens as proxy credentials)"
                    .to_owned(),
                String::new(),
            ),
        };
        let _ = write!(
            y,
            "\
# runta egress: Envoy {title}.
# Rendered by `runta envoy bootstrap`; edit the command's flags rather than this file.
# Runtimes send plain HTTP through this proxy (HTTP_PROXY=http://{listen_host}:{listen_port}); every request
# passes runta's ext_proc filter, then leaves over TLS (SNI and certificate validation).
admin:
  address:
    pipe:
      path: {admin}
static_resources:
  listeners:
  - name: egress
    address:
      socket_address: {{ address: {listen_host}, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          http_protocol_options:
            allow_absolute_url: true
          # Paths are normalised before runta matches them; an encoded '/' or '\\' is refused.
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                # No query strings: an injected parameter must never reach a log.
                text_format_source:
                  inline_string: \"[%START_TIME%] %REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION%ms\\n\"
                formatters:
                - name: envoy.formatter.req_without_query
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery
          route_config:
            name: egress
            virtual_hosts:
            - name: egress
              domains: [\"*\"]
              routes:
              - match:
                  connect_matcher: {{}}
                direct_response:
                  status: 403
                  body: {{ inline_string: \"runta egress: CONNECT tunnels are not allowed; send plain HTTP through this proxy\\n\" }}
{blocked}              - match: {{ prefix: \"/\" }}
                route:
                  cluster: upstream
                  timeout: 60s
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{ cluster_name: runta_extproc }}
                timeout: 1s
                initial_metadata:
                - {{ key: authorization, value: {token} }}
{metadata}              # Fail closed: if runta cannot answer, the request does not leave.
              failure_mode_allow: false
              message_timeout: {timeout}s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
              # host, :authority, :scheme, :method and x-envoy-* stay as the runtime sent them;
              # an attempt to change them is an error, not silently ignored.
              mutation_rules:
                disallow_is_error: true
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: &dns_cache
                name: egress_dns_cache
                dns_lookup_family: V4_PREFERRED
{resolver}          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: *dns_cache
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        upstream_http_protocol_options:
          auto_sni: true
          auto_san_validation: true
        explicit_http_config:
          http_protocol_options: {{}}
    # Every request leaves over TLS; a host without a port goes to 443.
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: {ca} }}
  - name: runta_extproc
    {cluster_type}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    # Every in-flight request holds one ext_proc stream: the defaults (1024) are too small
    # under load.
    circuit_breakers:
      thresholds:
      - max_connections: 1024
        max_pending_requests: 16384
        max_requests: 16384
        max_retries: 3
    load_assignment:
      cluster_name: runta_extproc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
{extproc}",
            title = title,
            admin = yaml_str(&self.admin_socket),
            listen_host = self.listen_host,
            listen_port = self.listen_port,
            blocked = blocked_routes(),
            token = yaml_str(&format!("Bearer {}", self.gateway_token)),
            metadata = metadata,
            timeout = format_seconds(self.message_timeout_ms),
            resolver = self.resolver_yaml(),
            ca = yaml_str(&self.ca_bundle),
            cluster_type = match self.extproc {
                ExtprocAddress::Tcp { .. } => "type: STRICT_DNS",
                ExtprocAddress::Unix(_) => "type: STATIC",
            },
            extproc = match &self.extproc {
                ExtprocAddress::Tcp { host, port } => format!(
                    "              socket_address: {{ address: {}, port_value: {port} }}\n",
                    yaml_str(host)
                ),
                ExtprocAddress::Unix(path) => format!(
                    "              pipe: {{ path: {} }}\n",
                    yaml_str(path)
                ),
            },
        );
        y
    }

    fn resolver_yaml(&self) -> String {
        match &self.dns_resolver {
            None => String::new(),
            Some((host, port)) => format!(
                "                typed_dns_resolver_config:
                  name: envoy.network.dns_resolver.cares
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
                    resolvers:
                    - socket_address: {{ address: {}, port_value: {port} }}
                    dns_resolver_options:
                      no_default_search_domain: true
",
                yaml_str(host)
            ),
        }
    }
}

/// The token the example files in `envoy/` carry: replace it (or render your own with
/// `runta envoy bootstrap`, which uses the server's real token).
pub const EXAMPLE_GATEWAY_TOKEN: &str = "runta_gw_CHANGE_ME";

/// Destinations a runtime may not reach through the proxy, as `:authority` patterns (RE2,
/// kept small enough for Envoy's default program-size limit): loopback names, loopback,
/// unspecified, integer and link-local IPv4 forms (cloud metadata services among them), and
/// loopback, mapped and link-local IPv6 literals; any port.
pub const BLOCKED_AUTHORITIES: &[&str] = &[
    "^(?i)([^:]*\\\\.)?localhost\\\\.?(:[0-9]+)?$",
    "^(?i)(127\\\\.[0-9.]+|0\\\\.0\\\\.0\\\\.0|[0-9]+|0x[0-9a-fx.]+|169\\\\.254\\\\.[0-9.]+)(:[0-9]+)?$",
    "^(?i)\\\\[(::1?|::ffff:[0-9a-f.:]+|fe80:[0-9a-f:%.]*)\\\\](:[0-9]+)?$",
];

fn blocked_routes() -> String {
    let mut out = String::new();
    for regex in BLOCKED_AUTHORITIES {
        let _ = write!(
            out,
            "              - match:
                  prefix: \"/\"
                  headers:
                  - name: \":authority\"
                    string_match:
                      safe_regex:
                        regex: \"{regex}\"
                direct_response:
                  status: 403
                  body: {{ inline_string: \"runta egress: this destination is not allowed\\n\" }}
"
        );
    }
    out
}

fn format_seconds(ms: u32) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}", ms / 1000)
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_owned()
    }
}

/// A YAML double-quoted scalar.
fn yaml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extproc_addresses() {
        assert_eq!(
            ExtprocAddress::parse("runta:50051").unwrap(),
            ExtprocAddress::Tcp {
                host: "runta".into(),
                port: 50051
            }
        );
        assert_eq!(
            ExtprocAddress::parse("[::1]:50051").unwrap(),
            ExtprocAddress::Tcp {
                host: "::1".into(),
                port: 50051
            }
        );
        assert_eq!(
            ExtprocAddress::parse("unix:/run/x.sock").unwrap(),
            ExtprocAddress::Unix("/run/x.sock".into())
        );
        for bad in ["runta", "runta:0", "runta:x", ":1", "unix:"] {
            assert!(ExtprocAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sidecar_carries_identity_and_gateway_does_not() {
        let sidecar = Bootstrap::defaults(Mode::Sidecar {
            tenant: "acme".into(),
            runtime: "worker".into(),
        })
        .render();
        assert!(sidecar.contains("key: x-runta-tenant, value: \"acme\""));
        assert!(sidecar.contains("key: x-runta-runtime, value: \"worker\""));
        let gateway = Bootstrap::defaults(Mode::Gateway).render();
        assert!(!gateway.contains("x-runta-"));
        assert!(gateway.contains("value: \"Bearer runta_gw_CHANGE_ME\""));
    }

    #[test]
    fn scalars_are_quoted() {
        assert_eq!(yaml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(format_seconds(500), "0.5");
        assert_eq!(format_seconds(2000), "2");
        assert_eq!(format_seconds(250), "0.25");
    }
}
