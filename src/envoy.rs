//! Envoy configurations for runta: `runta envoy bootstrap` renders them, and the files in
//! `envoy/` are its output with default values (a test keeps them equal).
//!
//! Both modes are an HTTP forward proxy (runtimes use it as `HTTP_PROXY` and `HTTPS_PROXY`)
//! whose every request passes runta's ext_proc filter (request headers only, failing closed)
//! before a dynamic forward proxy sends it upstream over TLS, with SNI and certificate
//! validation against a CA bundle. A sidecar authenticates its calls to runta (ext_proc and
//! SDS) with its runtime's token (`x-runta-runtime-token`), which fixes its identity; the
//! shared gateway authenticates with a gateway token and leaves identity to the runtime tokens
//! runtimes use as proxy credentials.
//!
//! HTTPS: a CONNECT passes ext_proc too, and runta's answer routes it (`x-runta-connect`, route
//! cache cleared): to the internal `intercept` listener, which terminates the client's TLS with
//! a leaf certificate runta serves over Delta SDS for the SNI and sends the decrypted requests
//! through the same filters (the tunnel's credentials and target carried as hashable filter
//! state, one internal connection per tunnel); or through as a plain TCP tunnel.
//!
//! What a runtime can never reach through it: Envoy's admin interface (a Unix socket, not a
//! port); loopback, unspecified and link-local addresses (runta's own ports, cloud metadata),
//! their IPv4-mapped, IPv4-compatible and NAT64 forms, and on the shared gateway by default the
//! private ranges — judged by the address the name **resolved** to (the dynamic forward proxy
//! saves it; an RBAC filter refuses it), for plain requests and tunnels alike, so no spelling or
//! DNS name gets around it; named exceptions are explicit (`allowed_upstreams`). Also refused:
//! an authority that is not `host[:port]` with a port of digits (a CONNECT's must have the
//! port). Upstream receives what the runtime sent plus the injection: proxy credentials and
//! Envoy's own headers are removed.

use std::fmt::Write as _;

/// Which deployment the configuration is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One Envoy per runtime: its ext_proc streams carry the runtime's token, which
    /// authenticates them and fixes the identity.
    Sidecar {
        runtime: String,
        runtime_token: String,
        injection: Injection,
    },
    /// One Envoy for many runtimes: a gateway token; identity from the runtime tokens the
    /// runtimes send as proxy credentials.
    Gateway,
}

/// How a sidecar injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// runta compiles the runtime's rules into routes that inject in Envoy (pushed over
    /// ADS); what it cannot compile, and HTTPS tunnels' inner requests, go through ext_proc.
    Native,
    /// Every request through ext_proc.
    ExtProc,
}

/// An upstream address the guard lets through although its range is refused: a CIDR block
/// and, optionally, one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUpstream {
    pub network: IpNet,
    pub port: Option<u16>,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max && len.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("'/{len}' is not a prefix length from 0 to {max}"))?,
        };
        Ok(Self { addr, prefix_len })
    }
}

impl AllowedUpstream {
    /// `IP`, `IP:PORT`, `CIDR`, `CIDR:PORT`; IPv6 in brackets when a port follows
    /// (`[::1]:8443`, `[fd00::/8]:443`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (net, port) = if let Some(rest) = text.strip_prefix('[') {
            let (net, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{text}': missing ']'"))?;
            match after {
                "" => (net, None),
                _ => (
                    net,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| format!("'{text}': expected ':PORT' after ']'"))?,
                    ),
                ),
            }
        } else if text.matches(':').count() == 1 {
            let (net, port) = text.split_once(':').expect("one colon");
            (net, Some(port))
        } else {
            (text, None)
        };
        let network = IpNet::parse(net).map_err(|m| format!("'{text}': {m}"))?;
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("'{text}': the port must be a number from 1 to 65535"))
            })
            .transpose()?;
        Ok(Self { network, port })
    }
}

/// Destinations refused by resolved address on every Envoy: loopback, unspecified and
/// link-local (cloud metadata services, AWS's IPv6 one included), every IPv4-mapped and
/// IPv4-compatible IPv6 address, and the NAT64 forms of the IPv4 ranges.
pub const ALWAYS_BLOCKED_UPSTREAMS: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "::/96",
    "::ffff:0:0/96",
    "fe80::/10",
    "fd00:ec2::254/128",
    "64:ff9b::/104",
    "64:ff9b::7f00:0/104",
    "64:ff9b::a9fe:0/112",
];

/// Private ranges, refused by default on the shared gateway (`--private-upstreams deny`):
/// RFC 1918, carrier-grade NAT, IPv6 unique local, their NAT64 forms, and local-use NAT64.
pub const PRIVATE_UPSTREAMS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "64:ff9b::a00:0/104",
    "64:ff9b::ac10:0/108",
    "64:ff9b::c0a8:0/112",
    "64:ff9b::6440:0/106",
    "64:ff9b:1::/48",
];

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
    /// Sent as `authorization: Bearer ...` on every ext_proc stream (gateway mode).
    pub gateway_token: String,
    /// Refuse the private ranges as upstreams (the shared gateway's default).
    pub block_private_upstreams: bool,
    /// Exceptions to the refused ranges.
    pub allowed_upstreams: Vec<AllowedUpstream>,
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
        let block_private_upstreams = matches!(mode, Mode::Gateway);
        Self {
            mode,
            listen_host: "127.0.0.1".into(),
            listen_port: 10000,
            extproc: ExtprocAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 50051,
            },
            gateway_token: EXAMPLE_GATEWAY_TOKEN.into(),
            block_private_upstreams,
            allowed_upstreams: Vec::new(),
            ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
            dns_resolver: None,
            admin_socket: format!("/tmp/runta-envoy-{name}-admin.sock"),
            message_timeout_ms: 500,
        }
    }

    /// The Envoy bootstrap configuration, as YAML.
    pub fn render(&self) -> String {
        let mut y = String::with_capacity(16 * 1024);
        let (title, node) = match &self.mode {
            Mode::Sidecar { runtime, .. } => (
                format!(
                    "per-runtime sidecar of runtime '{runtime}' (its runtime token authenticates it and fixes its identity)"
                ),
                format!("runta-sidecar-{runtime}"),
            ),
            Mode::Gateway => (
                "shared edge gateway (runtimes identify with runtime tokens as proxy credentials)"
                    .to_owned(),
                "runta-gateway".to_owned(),
            ),
        };
        // The same plain-request routes on the proxy listener and inside intercepted tunnels.
        let routes = &plain_routes("              ");
        let _ = write!(
            y,
            "\
# runta egress: Envoy {title}.
# Rendered by `runta envoy bootstrap`; edit the command's flags rather than this file.
# Runtimes use this proxy for HTTP and HTTPS (HTTP_PROXY and HTTPS_PROXY=http://{listen_host}:{listen_port}).
# Plain HTTP requests pass runta's ext_proc filter, then leave over TLS (SNI and certificate
# validation). A CONNECT tunnel to a host the runtime has rules for is intercepted: Envoy
# terminates the client's TLS with a leaf certificate runta mints for the name (Delta SDS) and
# its requests pass the same filter; other tunnels pass through untouched.
admin:
  address:
    pipe:
      path: {admin}
# The on-demand certificate selector needs a node id and cluster.
node: {{ id: {node}, cluster: {node} }}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
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
          # Upstream gets what the runtime sent plus the injection: no generated request id.
          generate_request_id: false
          upgrade_configs:
          - upgrade_type: CONNECT
          http_protocol_options:
            allow_absolute_url: true
            # Python's http.client sends CONNECT ... HTTP/1.0.
            accept_http_10: true
          http2_protocol_options:
            allow_connect: true
          # Paths are normalised before runta matches them; an encoded '/' or '\\' is refused.
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
{access_log_outer}{egress_routes}          http_filters:
          # CONNECT only (enabled on the CONNECT routes): the tunnel's target and credentials,
          # as filter state the interception listener's connection inherits. Hashable: the
          # internal connection pool is keyed by it, so tunnels never share an identity.
          - name: envoy.filters.http.set_filter_state
            disabled: true
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
              on_request_headers:
              - object_key: {credentials_state}
                factory_key: envoy.hashable_string
                format_string:
                  text_format_source: {{ inline_string: \"%REQ(proxy-authorization)%\" }}
                  omit_empty_values: true
                skip_if_empty: true
                shared_with_upstream: ONCE
              - object_key: {target_state}
                factory_key: envoy.hashable_string
                format_string:
                  text_format_source: {{ inline_string: \"%REQ(:authority)%\" }}
                shared_with_upstream: ONCE
{extproc_outer}          - &dynamic_forward_proxy
            name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: &dns_cache
                name: egress_dns_cache
                dns_lookup_family: V4_PREFERRED
                # Distinct upstream names at once (each kept 5 minutes after its last use); past
                # it new names get 503. The default, 1,024, is few for a shared gateway with
                # wildcard rules.
                max_hosts: 16384
{resolver}              # The resolved address goes into the stream's filter state for the guard below.
              save_upstream_address: true
          # The guard: refuse the address the name resolved to when it is in a refused range
          # (and not an explicit exception). The same DNS cache entry gives the address dialled.
          - &upstream_guard
            name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  refused-upstream-address:
                    permissions:
{guard}                    principals:
                    - any: true
          - &router
            name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              # No x-envoy-* headers upstream.
              suppress_envoy_headers: true
  # Intercepted tunnels: TLS terminated with runta's leaf for the client's server name, then
  # the same filters as plain requests, with the tunnel's identity.
  - name: intercept
    internal_listener: {{}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
    # Bounds a handshake waiting for a certificate while runta cannot be reached.
    - transport_socket_connect_timeout: 5s
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          # Every handshake asks for the name's certificate (the selector needs it).
          disable_stateless_session_resumption: true
          disable_stateful_session_resumption: true
          common_tls_context:
            alpn_protocols: [\"h2\", \"http/1.1\"]
            custom_tls_certificate_selector:
              name: envoy.tls.certificate_selectors.on_demand_secret
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.cert_selectors.on_demand_secret.v3.Config
                certificate_mapper:
                  name: envoy.tls.certificate_mappers.sni
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.cert_mappers.sni.v3.SNI
                    # No server name: a name runta never answers, so the handshake fails.
                    default_value: runta-no-sni
                # runta answers only names the rules cover, over Delta SDS on its gRPC port
                # (removed_resources for the others: the handshake fails at once).
                config_source:
                  resource_api_version: V3
                  api_config_source:
                    api_type: DELTA_GRPC
                    transport_api_version: V3
                    grpc_services:
                    - envoy_grpc: {{ cluster_name: runta_extproc }}
                      initial_metadata: *runta_credentials
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: intercept
          codec_type: AUTO
          generate_request_id: false
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
{access_log_inner}          route_config:
            name: intercept
            virtual_hosts:
            - name: intercept
              domains: [\"*\"]
              routes:
{plain_routes_inner}          http_filters:
{extproc_inner}          - *dynamic_forward_proxy
          - *upstream_guard
          - *router
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
  # Tunnels passed through: plain TCP to the CONNECT target (the client does its own TLS).
  - name: upstream_tunnel
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: *dns_cache
  # The interception listener, inside Envoy; one connection per tunnel, never pooled across.
  - name: intercept
    type: STATIC
    connection_pool_per_downstream_connection: true
    load_assignment:
      cluster_name: intercept
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              envoy_internal_address: {{ server_listener_name: intercept }}
    transport_socket:
      name: envoy.transport_sockets.internal_upstream
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        transport_socket:
          name: envoy.transport_sockets.raw_buffer
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
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
            node = yaml_str(&node),
            listen_host = self.listen_host,
            listen_port = self.listen_port,
            egress_routes = self.egress_routes(),
            credentials_state = crate::extproc::TUNNEL_CREDENTIALS_STATE,
            target_state = crate::extproc::TUNNEL_TARGET_STATE,
            access_log_outer = access_log("egress", false, self.native_runtime().is_some()),
            access_log_inner = access_log("intercept", true, false),
            plain_routes_inner = routes,
            extproc_outer = self.native_filter() + &self.extproc_filter(false),
            extproc_inner = self.extproc_filter(true),
            guard = self.guard_yaml(),
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
        if self.native_runtime().is_some() {
            y.push_str(
                "# Native injection: the egress routes and the secrets they inject come from runta over one
# Delta ADS stream, authenticated like ext_proc (the runtime token).
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: { cluster_name: runta_extproc }
      initial_metadata: *runta_credentials
",
            );
        }
        y
    }

    /// The egress listener's routes: static (every request through ext_proc), or, for a
    /// sidecar with native injection, runta's compilation of its runtime's rules over ADS.
    fn egress_routes(&self) -> String {
        if let Some(runtime) = self.native_runtime() {
            return format!(
                "          # The routes are runta's: this runtime's rules compiled into routes that inject
          # natively, pushed over ADS with the secrets they use. The listener stays closed
          # until they are in.
          rds:
            route_config_name: {name}
            config_source:
              resource_api_version: V3
              ads: {{}}
              initial_fetch_timeout: 0s
",
                name = yaml_str(&crate::xds::compile::route_table_name(runtime)),
            );
        }
        format!(
            "          route_config:
            name: egress
            virtual_hosts:
            - name: egress
              domains: [\"*\"]
              routes:
              # A CONNECT names host:port, nothing else.
              - match:
                  connect_matcher: {{}}
                  headers:
                  - name: \":authority\"
                    invert_match: true
                    string_match:
                      safe_regex:
                        regex: \"{connect_regex}\"
                direct_response:
                  status: 400
                  body: {{ inline_string: {bad_connect} }}
              # runta's answer to the CONNECT set {route_header} (overwriting any the client sent)
              # and cleared the route cache: `intercept` goes to the interception listener.
              - match:
                  connect_matcher: {{}}
                  headers:
                  - name: {route_header}
                    string_match: {{ exact: intercept }}
                route:
                  cluster: intercept
                  timeout: 0s
                  upgrade_configs:
                  - upgrade_type: CONNECT
                    connect_config: {{}}
                typed_per_filter_config:
                  envoy.filters.http.set_filter_state: &keep_tunnel_identity
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config: {{}}
                  # No upstream address on this route (the interception listener is inside
                  # Envoy; it guards what its requests reach). An empty RBACPerRoute, unlike a
                  # disabled filter, is read from the route chosen after runta's answer.
                  envoy.filters.http.rbac:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
              # Every other tunnel runta let on: a TCP tunnel to the target, untouched.
              - match:
                  connect_matcher: {{}}
                route:
                  cluster: upstream_tunnel
                  timeout: 0s
                  upgrade_configs:
                  - upgrade_type: CONNECT
                    connect_config: {{}}
                typed_per_filter_config:
                  envoy.filters.http.set_filter_state: *keep_tunnel_identity
{plain_routes}",
            connect_regex = CONNECT_TARGET_REGEX,
            bad_connect = yaml_str(BAD_CONNECT_TARGET_BODY),
            route_header = CONNECT_ROUTE_HEADER,
            plain_routes = plain_routes("              "),
        )
    }

    /// The filter that applies the compiled routes' header mutations (native injection only).
    fn native_filter(&self) -> String {
        if self.native_runtime().is_none() {
            return String::new();
        }
        "          # Native injection: the header mutations of runta's compiled routes (the value of a
          # `%SECRET(name)%` comes from SDS). Routes without any leave it idle.
          - name: envoy.filters.http.header_mutation
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
"
        .to_owned()
    }

    /// The runtime of a sidecar with native injection.
    fn native_runtime(&self) -> Option<&str> {
        match &self.mode {
            Mode::Sidecar {
                runtime,
                injection: Injection::Native,
                ..
            } => Some(runtime),
            _ => None,
        }
    }

    /// The gRPC metadata every call to runta carries (ext_proc and SDS): the sidecar's runtime
    /// token or the gateway's token, as YAML list items at column 0.
    fn grpc_metadata(&self) -> String {
        match &self.mode {
            Mode::Sidecar { runtime_token, .. } => format!(
                "- {{ key: x-runta-runtime-token, value: {} }}\n",
                yaml_str(runtime_token)
            ),
            Mode::Gateway => format!(
                "- {{ key: authorization, value: {} }}\n",
                yaml_str(&format!("Bearer {}", self.gateway_token))
            ),
        }
    }

    /// runta's ext_proc filter, as an `http_filters` item; in the interception listener it
    /// also asks for the tunnel's attributes.
    fn extproc_filter(&self, in_tunnel: bool) -> String {
        let attributes = if in_tunnel {
            format!(
                "              # The tunnel's target and credentials (filter state from the CONNECT) and the
              # TLS server name: what identifies these requests, out of the client's reach.
              request_attributes:
              - {}
              - {}
              - {}
",
                yaml_str(crate::extproc::TUNNEL_TARGET_ATTRIBUTE),
                yaml_str(crate::extproc::TUNNEL_CREDENTIALS_ATTRIBUTE),
                yaml_str(crate::extproc::SERVER_NAME_ATTRIBUTE),
            )
        } else {
            String::new()
        };
        // In a native sidecar's proxy listener runta's routes turn ext_proc on where they need
        // it: a filter that runs on every request costs Envoy even where a route disables it.
        let disabled = if !in_tunnel && self.native_runtime().is_some() {
            "            # On only where runta's routes turn it on (every route but the compiled ones).
            disabled: true
"
        } else {
            ""
        };
        format!(
            "          - name: envoy.filters.http.ext_proc
{disabled}            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{ cluster_name: runta_extproc }}
                timeout: 1s
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
{attributes}",
            // Written once (a YAML anchor) and referred to by the other calls to runta.
            metadata = if in_tunnel {
                "                initial_metadata: *runta_credentials\n".to_owned()
            } else {
                format!(
                    "                initial_metadata: &runta_credentials\n{}",
                    indent_lines(&self.grpc_metadata(), "                ")
                )
            },
            timeout = format_seconds(self.message_timeout_ms),
        )
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

/// The runtime token the example sidecar file in `envoy/` carries: render your own with
/// `runta envoy bootstrap --mode sidecar --runtime R`, which creates a real one.
pub const EXAMPLE_RUNTIME_TOKEN: &str = "runta_rt_CHANGE_ME";

/// The token the example files in `envoy/` carry: replace it (or render your own with
/// `runta envoy bootstrap`, which uses the server's real token).
pub const EXAMPLE_GATEWAY_TOKEN: &str = "runta_gw_CHANGE_ME";

/// A well-formed `:authority`: a DNS name or a bracketed IPv6 literal, and an optional port of
/// one to five digits (RE2; character classes instead of backslashes, which YAML would eat).
pub const AUTHORITY_REGEX: &str = "^([[][0-9A-Fa-f:.]+[]]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$";

/// A well-formed CONNECT target: the same, with the port required.
pub const CONNECT_TARGET_REGEX: &str = "^([[][0-9A-Fa-f:.]+[]]|[A-Za-z0-9._-]+):[0-9]{1,5}$";

/// Envoy's answer to a CONNECT whose target is not `host:port`.
pub const BAD_CONNECT_TARGET_BODY: &str = "runta egress: the CONNECT target must be host:port\n";

/// Envoy's answer to a request whose destination is not `host[:port]`.
pub const BAD_AUTHORITY_BODY: &str = "runta egress: the destination must be host[:port]\n";

/// Headers that never go upstream: the runtime's proxy credentials and the proxy's own.
pub const FORWARDED_HEADERS_REMOVED: &[&str] = &[
    "proxy-authorization",
    "x-forwarded-proto",
    "x-envoy-internal",
];

/// The header runta's answer to a CONNECT routes it by (`intercept` or `tunnel`).
pub use crate::extproc::CONNECT_ROUTE_HEADER;

impl Bootstrap {
    /// The RBAC permission that refuses an upstream address: in a refused range and not an
    /// exception.
    fn guard_yaml(&self) -> String {
        let mut refused: Vec<&str> = ALWAYS_BLOCKED_UPSTREAMS.to_vec();
        if self.block_private_upstreams {
            refused.extend(PRIVATE_UPSTREAMS);
        }
        let indent = "                    ";
        let mut out = String::new();
        let in_refused = refused
            .iter()
            .map(|cidr| upstream_matcher(&IpNet::parse(cidr).expect("valid constant"), None))
            .collect::<Vec<_>>();
        if self.allowed_upstreams.is_empty() {
            let _ = writeln!(out, "{indent}- or_rules:\n{indent}    rules:");
            for m in &in_refused {
                out.push_str(&indent_lines(m, &format!("{indent}    ")));
            }
            return out;
        }
        let _ = writeln!(out, "{indent}- and_rules:\n{indent}    rules:");
        let _ = writeln!(out, "{indent}    - or_rules:\n{indent}        rules:");
        for m in &in_refused {
            out.push_str(&indent_lines(m, &format!("{indent}        ")));
        }
        let _ = writeln!(
            out,
            "{indent}    - not_rule:\n{indent}        or_rules:\n{indent}          rules:"
        );
        for allowed in &self.allowed_upstreams {
            out.push_str(&indent_lines(
                &upstream_matcher(&allowed.network, allowed.port),
                &format!("{indent}          "),
            ));
        }
        out
    }
}

/// One RBAC permission matching an upstream network (and port), as YAML lines at column 0.
fn upstream_matcher(net: &IpNet, port: Option<u16>) -> String {
    let mut m = format!(
        "- matcher:
    name: envoy.rbac.matchers.upstream_ip_port
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher
      upstream_ip: {{ address_prefix: \"{}\", prefix_len: {} }}
",
        net.addr, net.prefix_len
    );
    if let Some(port) = port {
        let _ = writeln!(
            m,
            "      upstream_port_range: {{ start: {port}, end: {} }}",
            u32::from(port) + 1
        );
    }
    m
}

/// The routes of plain requests (on the proxy listener and inside intercepted tunnels), as
/// route list items indented by `indent`.
fn plain_routes(indent: &str) -> String {
    let routes = format!(
        "# Only host[:port] with a port of digits: anything else (userinfo, a signed or
# named port) could be read one way here and another upstream.
- match:
    prefix: \"/\"
    headers:
    - name: \":authority\"
      invert_match: true
      string_match:
        safe_regex:
          regex: \"{AUTHORITY_REGEX}\"
  direct_response:
    status: 400
    body: {{ inline_string: {bad_authority} }}
- match: {{ prefix: \"/\" }}
  route:
    cluster: upstream
    # No overall deadline: streamed answers (server-sent events) may take minutes; an idle
    # stream still ends after Envoy's stream_idle_timeout (5 minutes).
    timeout: 0s
  # The runtime's proxy credentials and the proxy's own headers stay here.
  request_headers_to_remove:
{removed}",
        bad_authority = yaml_str(BAD_AUTHORITY_BODY),
        removed = FORWARDED_HEADERS_REMOVED
            .iter()
            .map(|h| format!("  - {h}\n"))
            .collect::<String>(),
    );
    indent_lines(&routes, indent)
}

/// The access log of a listener: no query strings (an injected parameter must never reach a
/// log), and never a header value.
/// With `route_names`, also the route's name: a compiled route is named for its rules
/// (`rule:<ids>`), so the log tells which rules Envoy injected for.
fn access_log(name: &str, in_tunnel: bool, route_names: bool) -> String {
    let mut extra = String::new();
    if in_tunnel {
        extra.push_str(" sni=%REQUESTED_SERVER_NAME%");
    }
    if route_names {
        extra.push_str(" route=%ROUTE_NAME%");
    }
    format!(
        "          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                # No query strings: an injected parameter must never reach a log.
                text_format_source:
                  inline_string: \"[%START_TIME%] {name} %REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ_WITHOUT_QUERY(:PATH)%{extra} %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION%ms\\n\"
                formatters:
                - name: envoy.formatter.req_without_query
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery
"
    )
}

fn indent_lines(text: &str, indent: &str) -> String {
    text.lines().map(|l| format!("{indent}{l}\n")).collect()
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
            '\n' => out.push_str("\\n"),
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
    fn a_sidecar_carries_its_runtime_token_and_the_gateway_its_gateway_token() {
        let sidecar = Bootstrap::defaults(Mode::Sidecar {
            runtime: "worker".into(),
            runtime_token: "runta_rt_abc".into(),
            injection: Injection::Native,
        })
        .render();
        assert!(sidecar.contains("key: x-runta-runtime-token, value: \"runta_rt_abc\""));
        assert!(
            !sidecar.contains("key: authorization"),
            "no gateway token in a sidecar"
        );
        assert!(!sidecar.contains("x-runta-tenant"));
        let gateway = Bootstrap::defaults(Mode::Gateway).render();
        assert!(!gateway.contains("x-runta-runtime-token") && !gateway.contains("x-runta-tenant"));
        // Written once; the proxy listener's ext_proc, the interception listener's, SDS and
        // (a native sidecar's) ADS all send it.
        for (text, uses) in [(&gateway, 2), (&sidecar, 3)] {
            assert_eq!(
                text.matches("initial_metadata: &runta_credentials").count(),
                1
            );
            assert_eq!(
                text.matches("initial_metadata: *runta_credentials").count(),
                uses
            );
        }
        assert_eq!(gateway.matches("runta_gw_CHANGE_ME").count(), 1);
    }

    #[test]
    fn the_guard_refuses_private_ranges_by_default_on_the_gateway_only() {
        let private = "address_prefix: \"10.0.0.0\", prefix_len: 8";
        let loopback = "address_prefix: \"127.0.0.0\", prefix_len: 8";
        let gateway = Bootstrap::defaults(Mode::Gateway).render();
        assert!(gateway.contains(private) && gateway.contains(loopback));
        let sidecar = Bootstrap::defaults(Mode::Sidecar {
            runtime: "worker".into(),
            runtime_token: "t".into(),
            injection: Injection::Native,
        })
        .render();
        assert!(sidecar.contains(loopback) && !sidecar.contains(private));
        // Every refused range is in the rendering.
        for cidr in ALWAYS_BLOCKED_UPSTREAMS.iter().chain(PRIVATE_UPSTREAMS) {
            let net = IpNet::parse(cidr).unwrap();
            let text = format!(
                "address_prefix: \"{}\", prefix_len: {}",
                net.addr, net.prefix_len
            );
            assert!(gateway.contains(&text), "{cidr}");
        }
        // An exception comes as "refused and not allowed".
        let mut with_exception = Bootstrap::defaults(Mode::Gateway);
        with_exception.allowed_upstreams = vec![AllowedUpstream::parse("127.0.0.1:8443").unwrap()];
        let text = with_exception.render();
        assert!(text.contains("not_rule:"));
        assert!(text.contains("upstream_port_range: { start: 8443, end: 8444 }"));
    }

    #[test]
    fn allowed_upstreams_parse() {
        for (text, addr, len, port) in [
            ("127.0.0.1", "127.0.0.1", 32, None),
            ("127.0.0.1:8443", "127.0.0.1", 32, Some(8443)),
            ("10.0.0.0/8", "10.0.0.0", 8, None),
            ("10.0.0.0/8:443", "10.0.0.0", 8, Some(443)),
            ("::1", "::1", 128, None),
            ("[::1]:8443", "::1", 128, Some(8443)),
            ("[fd00::/8]:443", "fd00::", 8, Some(443)),
        ] {
            let parsed = AllowedUpstream::parse(text).unwrap();
            assert_eq!(parsed.network.addr.to_string(), addr, "{text}");
            assert_eq!(parsed.network.prefix_len, len, "{text}");
            assert_eq!(parsed.port, port, "{text}");
        }
        for bad in [
            "",
            "x",
            "127.0.0.1:+1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "[::1",
            "[::1]8443",
            "::1/129",
        ] {
            assert!(AllowedUpstream::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scalars_are_quoted() {
        assert_eq!(yaml_str("a\"b\\c\n\t"), "\"a\\\"b\\\\c\\n\\u0009\"");
        assert_eq!(format_seconds(500), "0.5");
        assert_eq!(format_seconds(2000), "2");
        assert_eq!(format_seconds(250), "0.25");
    }
}
