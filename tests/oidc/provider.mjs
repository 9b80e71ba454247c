#!/usr/bin/env node
// A real OAuth 2.0 / OpenID Connect provider for tokensdk's tests: panva's oidc-provider
// (pinned in package.json) with a password grant, short configurable lifetimes and a few
// test-only endpoints under /_harness/. See README.md beside this file.
//
//   node tests/oidc/provider.mjs [--port N] [--config JSON | --config-file PATH] [--watch-stdin]
//
// Listens on 127.0.0.1 (port 0 = any free port), prints one line
// `READY http://127.0.0.1:N` on stdout once it accepts connections, logs to stderr,
// exits 0 on SIGTERM/SIGINT (and when stdin closes, with --watch-stdin), 2 on a bad
// configuration. The issuer is the listening URL itself.

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';
// Internal modules: the package has no "exports" map and its version is pinned exactly, so
// these paths are stable here. The grant helpers are the ones the built-in grants use, which
// lets the password grant bind DPoP and refresh tokens exactly like authorization_code does.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

// --- the provider's clock ----------------------------------------------------------------
// oidc-provider reads time only through Date.now(); shifting it lets tests expire tokens by
// moving a clock (POST /_harness/clock?advance=SECONDS) instead of sleeping.
const realNow = Date.now.bind(Date);
let clockOffsetMs = 0;
Date.now = () => realNow() + clockOffsetMs;
const epoch = () => Math.floor(Date.now() / 1000);

// --- configuration ------------------------------------------------------------------------
const REDIRECT_URIS = ['http://127.0.0.1/callback'];
const ALL_GRANTS = [
  'authorization_code',
  'client_credentials',
  'password',
  'refresh_token',
  DEVICE_CODE,
];

const DEFAULTS = {
  // lifetimes in seconds
  accessTokenTTL: 3600,
  clientCredentialsTTL: null, // null: same as accessTokenTTL
  refreshTokenTTL: 14 * 24 * 3600,
  grantTTL: 14 * 24 * 3600,
  deviceCodeTTL: 600,
  // true | false | "default" (the library's own policy: rotate public clients' tokens, and
  // confidential ones after 70% of their lifetime)
  rotateRefreshToken: true,
  // "opaque": plain OAuth 2.0, opaque access tokens, no audience (introspectable, revocable).
  // "jwt": every token request defaults to the resource indicator `resource`, whose access
  // tokens are ES256 JWTs (typ at+jwt) with aud = resource; not introspectable.
  accessTokenFormat: 'opaque',
  resource: 'urn:tokensdk:api',
  // API scopes on top of openid and offline_access
  scopes: ['api:read', 'api:write'],
  users: { alice: 'wonderland', bob: 'builder' },
  clients: [
    {
      client_id: 'app',
      client_secret: 'app-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      application_type: 'native', // native: any port on a loopback redirect URI (RFC 8252)
      grant_types: ALL_GRANTS,
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    },
    {
      client_id: 'app-post',
      client_secret: 'app-post-secret',
      token_endpoint_auth_method: 'client_secret_post',
      application_type: 'native',
      grant_types: ALL_GRANTS,
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    },
    {
      client_id: 'cli',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      grant_types: ['authorization_code', 'password', 'refresh_token', DEVICE_CODE],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
    },
  ],
  // nonce: "off" (proofs must not carry one), "offered" (a DPoP-Nonce header on responses,
  // proofs without one still accepted), "required" (400/401 use_dpop_nonce until answered)
  dpop: { enabled: true, nonce: 'off' },
  // interval: seconds, added to the device authorization response (the library omits it, so
  // RFC 8628's default of 5 applies). slowDown: polls closer than `interval` on the
  // provider's clock answer slow_down (the library never sends slow_down on its own).
  device: { interval: null, slowDown: false },
  features: {
    clientCredentials: true,
    devInteractions: true,
    deviceFlow: true,
    introspection: true,
    revocation: true,
  },
};

class ConfigError extends Error {}

function merge(defaults, given, path) {
  if (given === undefined) return structuredClone(defaults);
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(defaults) || path === 'users') return given;
  if (!isObject(given)) throw new ConfigError(`${path || 'config'} must be an object`);
  for (const key of Object.keys(given)) {
    if (!(key in defaults)) throw new ConfigError(`unknown option ${path ? `${path}.` : ''}${key}`);
  }
  const out = {};
  for (const [key, value] of Object.entries(defaults)) {
    out[key] = merge(value, given[key], path ? `${path}.${key}` : key);
  }
  return out;
}

function check(condition, message) {
  if (!condition) throw new ConfigError(message);
}

function validate(cfg) {
  const positive = (name, v) => check(Number.isInteger(v) && v > 0, `${name} must be a positive integer`);
  for (const name of ['accessTokenTTL', 'refreshTokenTTL', 'grantTTL', 'deviceCodeTTL']) {
    positive(name, cfg[name]);
  }
  if (cfg.clientCredentialsTTL !== null) positive('clientCredentialsTTL', cfg.clientCredentialsTTL);
  check([true, false, 'default'].includes(cfg.rotateRefreshToken), 'rotateRefreshToken must be true, false or "default"');
  check(['opaque', 'jwt'].includes(cfg.accessTokenFormat), 'accessTokenFormat must be "opaque" or "jwt"');
  check(URL.canParse(cfg.resource), 'resource must be an absolute URI');
  check(Array.isArray(cfg.scopes) && cfg.scopes.every((s) => typeof s === 'string' && /^[\x21\x23-\x5B\x5D-\x7E]+$/.test(s)), 'scopes must be a list of scope tokens');
  check(cfg.users && typeof cfg.users === 'object' && Object.values(cfg.users).every((p) => typeof p === 'string'), 'users must map names to passwords');
  check(Array.isArray(cfg.clients) && cfg.clients.every((c) => c && typeof c.client_id === 'string'), 'clients must be a list of client metadata objects with a client_id');
  check(['off', 'offered', 'required'].includes(cfg.dpop.nonce), 'dpop.nonce must be "off", "offered" or "required"');
  check(cfg.device.interval === null || (Number.isInteger(cfg.device.interval) && cfg.device.interval > 0), 'device.interval must be null or a positive integer');
  check(!cfg.device.slowDown || cfg.device.interval !== null, 'device.slowDown needs device.interval');
  return cfg;
}

function parseCommandLine(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '0' },
      config: { type: 'string' },
      'config-file': { type: 'string' },
      'watch-stdin': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write('usage: node provider.mjs [--port N] [--config JSON | --config-file PATH] [--watch-stdin]\n');
    process.exit(0);
  }
  const port = Number(values.port);
  check(Number.isInteger(port) && port >= 0 && port < 65536, '--port must be a port number');
  check(!(values.config && values['config-file']), 'give --config or --config-file, not both');
  let given = {};
  try {
    if (values.config) given = JSON.parse(values.config);
    if (values['config-file']) given = JSON.parse(readFileSync(values['config-file'], 'utf8'));
  } catch (err) {
    throw new ConfigError(`configuration is not valid JSON: ${err.message}`);
  }
  return { port, watchStdin: values['watch-stdin'], cfg: validate(merge(DEFAULTS, given, '')) };
}

// --- storage --------------------------------------------------------------------------------
// The library's default memory store is a two-generation LRU of 1000 entries: a long fleet
// test or benchmark would silently lose grants and refresh tokens. This one only drops what
// has expired.
class Store {
  #map = new Map();

  #writes = 0;

  get(key) {
    const entry = this.#map.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiry !== undefined && entry.expiry <= Date.now()) {
      this.#map.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key, value, { maxAge } = {}) {
    const expiry = typeof maxAge === 'number' && Number.isFinite(maxAge) ? Date.now() + maxAge : undefined;
    this.#map.set(key, { value, expiry });
    this.#writes += 1;
    if (this.#writes % 10000 === 0) this.#sweep();
    return this;
  }

  delete(key) {
    return this.#map.delete(key);
  }

  #sweep() {
    const now = Date.now();
    for (const [key, entry] of this.#map) {
      if (entry.expiry !== undefined && entry.expiry <= now) this.#map.delete(key);
    }
  }
}

// --- the password grant (RFC 6749 §4.3) -----------------------------------------------------
function makePasswordGrant(provider, cfg) {
  const h = Object.fromEntries(
    Object.entries(grantHelpers).map(([name, fn]) => [name, fn.bind(undefined, provider)]),
  );
  const statics = new Set(['openid', 'offline_access', ...cfg.scopes]);
  const passwords = new Map(Object.entries(cfg.users));

  function passwordMatches(username, password) {
    const expected = passwords.get(username);
    if (expected === undefined) return false;
    const a = crypto.hash('sha256', expected, 'buffer');
    const b = crypto.hash('sha256', password, 'buffer');
    return crypto.timingSafeEqual(a, b);
  }

  return async function passwordGrant(ctx) {
    const { client, params } = ctx.oidc;
    for (const name of ['username', 'password']) {
      if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }

    const dPoP = await h.validateDpop(ctx);

    if (!passwordMatches(params.username, params.password)) {
      throw new errors.InvalidGrant('invalid username or password');
    }
    const accountId = params.username;

    const requested = [...h.validateClientScope(ctx)].filter(Boolean);
    for (const scope of requested) {
      if (!statics.has(scope)) throw new errors.InvalidScope('requested scope is not allowed', scope);
    }
    // As at the authorization endpoint: offline_access only for clients that may refresh.
    const scopes = requested.filter((s) => s !== 'offline_access' || client.grantTypeAllowed('refresh_token'));
    const scopeSet = new Set(scopes);

    const resourceServers = await h.resolveRequestedResources(ctx);
    if (resourceServers.length > 1) {
      throw new errors.InvalidTarget('only a single resource indicator value is supported for this grant type');
    }
    const [resourceServer] = resourceServers;

    const grant = new provider.Grant({ accountId, clientId: client.clientId });
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    if (resourceServer) {
      grant.addResourceScope(
        resourceServer.identifier(),
        scopes.filter((s) => resourceServer.scopes.has(s)).join(' '),
      );
    }
    const grantId = await grant.save();
    ctx.oidc.entity('Grant', grant);

    const at = new provider.AccessToken({
      accountId, client, grantId, gty: 'password', expiresWithSession: false,
    });
    if (dPoP) {
      await h.checkDpopReplay(ctx, dPoP, client.clientId, errors.InvalidGrant);
      at.setThumbprint('jkt', dPoP.thumbprint);
    }
    h.checkDpopRequired(ctx, dPoP);
    if (resourceServer) {
      at.resourceServer = resourceServer;
      at.scope = grant.getResourceScopeFiltered(
        resourceServer.identifier(),
        scopes.filter((s) => resourceServer.scopes.has(s)),
      );
    } else {
      at.scope = grant.getOIDCScopeFiltered(scopeSet);
    }
    ctx.oidc.entity('AccessToken', at);
    const accessToken = await at.save();

    let refreshToken;
    if (await h.shouldIssueRefreshToken(ctx, { scopes: scopeSet })) {
      const rt = new provider.RefreshToken({
        accountId,
        authTime: epoch(),
        client,
        expiresWithSession: false,
        grantId,
        gty: 'password',
        resource: resourceServer?.identifier(),
        rotations: 0,
        scope: scopes.join(' '),
      });
      await h.applyRefreshTokenBindings(ctx, at, rt);
      ctx.oidc.entity('RefreshToken', rt);
      refreshToken = await rt.save();
    }

    ctx.body = h.buildTokenResponse({
      accessToken,
      expiresIn: at.expiration,
      refreshToken,
      scope: at.scope || undefined,
      tokenType: at.tokenType,
    });
  };
}

// --- a protected resource: GET/POST /_harness/resource ---------------------------------------
// Accepts this provider's access tokens (opaque ones looked up, JWT ones verified), Bearer or
// DPoP (RFC 9449 §7: proof with htm, htu, iat, jti, ath; the token's jkt). Failures answer 401
// with the WWW-Authenticate challenge a real resource server sends.
function makeResource(provider, cfg, { issuer, publicKey, dpopAlgs }) {
  const htu = `${issuer}/_harness/resource`;
  const seenJtis = new Map();
  let nonce = crypto.randomBytes(16).toString('base64url');

  function challenge(ctx, scheme, error, description) {
    const parts = [`${scheme} realm="${issuer}"`];
    if (error) parts.push(`error="${error}"`, `error_description="${description}"`);
    if (cfg.dpop.enabled && scheme === 'DPoP') parts.push(`algs="${dpopAlgs.join(' ')}"`);
    const header = [parts.join(', ')];
    if (cfg.dpop.enabled && scheme !== 'DPoP') header.push(`DPoP realm="${issuer}", algs="${dpopAlgs.join(' ')}"`);
    ctx.status = 401;
    ctx.set('WWW-Authenticate', header.join(', '));
    // RFC 6750 §3.1: no error code when the request carried no credentials at all.
    ctx.body = error ? { error, error_description: description } : { message: 'authentication required' };
  }

  async function lookup(value) {
    if (value.split('.').length === 3) {
      try {
        const { payload } = await jwtVerify(value, publicKey, {
          issuer, audience: cfg.resource, typ: 'at+jwt', currentDate: new Date(Date.now()),
        });
        return {
          sub: payload.sub, clientId: payload.client_id, scope: payload.scope, jkt: payload.cnf?.jkt, format: 'jwt',
        };
      } catch {
        return undefined;
      }
    }
    const token = (await provider.AccessToken.find(value)) ?? (await provider.ClientCredentials.find(value));
    if (!token || !token.isValid) return undefined;
    return {
      sub: token.accountId ?? token.clientId, clientId: token.clientId, scope: token.scope, jkt: token.jkt, format: 'opaque',
    };
  }

  async function checkProof(ctx, value, jkt) {
    const proof = ctx.get('DPoP');
    if (!proof) return ['invalid_dpop_proof', 'DPoP proof missing'];
    let payload;
    let protectedHeader;
    try {
      ({ payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: dpopAlgs }));
    } catch {
      return ['invalid_dpop_proof', 'invalid DPoP proof signature or header'];
    }
    if (payload.htm !== ctx.method) return ['invalid_dpop_proof', 'DPoP proof htm mismatch'];
    const actual = URL.parse(payload.htu ?? '');
    if (actual) { actual.search = ''; actual.hash = ''; }
    if (actual?.href !== htu) return ['invalid_dpop_proof', 'DPoP proof htu mismatch'];
    if (typeof payload.jti !== 'string' || !payload.jti) return ['invalid_dpop_proof', 'DPoP proof jti missing'];
    if (typeof payload.iat !== 'number' || Math.abs(epoch() - payload.iat) > 300) return ['invalid_dpop_proof', 'DPoP proof iat not recent'];
    if (payload.ath !== crypto.hash('sha256', value, 'base64url')) return ['invalid_dpop_proof', 'DPoP proof ath mismatch'];
    if (await calculateJwkThumbprint(protectedHeader.jwk) !== jkt) return ['invalid_token', 'DPoP proof key does not match the token'];
    if (cfg.dpop.nonce === 'required' && payload.nonce !== nonce) {
      ctx.set('DPoP-Nonce', nonce);
      return ['use_dpop_nonce', 'resource server requires nonce in DPoP proof'];
    }
    const now = epoch();
    for (const [jti, exp] of seenJtis) if (exp < now) seenJtis.delete(jti);
    if (seenJtis.has(payload.jti)) return ['invalid_dpop_proof', 'DPoP proof replayed'];
    seenJtis.set(payload.jti, now + 600);
    return undefined;
  }

  async function resource(ctx) {
    const [scheme = '', value = ''] = (ctx.get('Authorization') || '').split(' ', 2);
    const kind = scheme.toLowerCase();
    if (!value || (kind !== 'bearer' && kind !== 'dpop')) {
      challenge(ctx, 'Bearer');
      return;
    }
    const shown = kind === 'dpop' ? 'DPoP' : 'Bearer';
    const token = await lookup(value);
    if (!token) {
      challenge(ctx, shown, 'invalid_token', 'invalid or expired access token');
      return;
    }
    if (token.jkt || kind === 'dpop') {
      if (kind !== 'dpop' || !token.jkt) {
        challenge(ctx, 'DPoP', 'invalid_token', 'token binding and authorization scheme mismatch');
        return;
      }
      const failure = await checkProof(ctx, value, token.jkt);
      if (failure) {
        challenge(ctx, 'DPoP', ...failure);
        return;
      }
    }
    ctx.body = {
      sub: token.sub, client_id: token.clientId, scope: token.scope, token_type: shown, format: token.format,
    };
  }

  resource.rotateNonce = () => {
    nonce = crypto.randomBytes(16).toString('base64url');
  };
  return resource;
}

// --- building the provider -------------------------------------------------------------------
function build(issuer, cfg) {
  const store = new Store();
  // ES256: a P-256 key is generated in ~1 ms, an RSA one in up to half a second.
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256', kid: 'es256' };
  const dpopAlgs = ['ES256', 'Ed25519', 'EdDSA'];
  const jwtMode = cfg.accessTokenFormat === 'jwt';
  const ccTTL = cfg.clientCredentialsTTL ?? cfg.accessTokenTTL;

  const configuration = {
    adapter: (name) => new MemoryAdapter(name, store),
    clients: cfg.clients,
    jwks: { keys: [jwk] },
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', ...cfg.scopes],
    async findAccount(_ctx, sub) {
      // devInteractions accept any login name, so any account id exists.
      return { accountId: sub, async claims() { return { sub }; } };
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? cfg.accessTokenTTL,
      AuthorizationCode: 60,
      ClientCredentials: (_ctx, token) => (token.resourceServer ? token.resourceServer.accessTokenTTL ?? ccTTL : ccTTL),
      DeviceCode: cfg.deviceCodeTTL,
      Grant: cfg.grantTTL,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: cfg.refreshTokenTTL,
      Session: 24 * 3600,
    },
    enabledJWA: { dPoPSigningAlgValues: dpopAlgs },
    features: {
      clientCredentials: { enabled: cfg.features.clientCredentials },
      devInteractions: { enabled: cfg.features.devInteractions },
      deviceFlow: { enabled: cfg.features.deviceFlow },
      introspection: { enabled: cfg.features.introspection },
      revocation: { enabled: cfg.features.revocation },
      dPoP: {
        enabled: cfg.dpop.enabled,
        ...(cfg.dpop.nonce !== 'off' ? { nonceSecret: crypto.randomBytes(32) } : {}),
        requireNonce: () => cfg.dpop.nonce === 'required',
      },
      // Off: with it on, an `openid` scope makes refreshed access tokens userinfo-only
      // (no audience) in jwt mode. Nothing here needs userinfo.
      userinfo: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? (jwtMode ? cfg.resource : undefined),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== cfg.resource) throw new errors.InvalidTarget();
          return {
            scope: cfg.scopes.join(' '),
            audience: cfg.resource,
            accessTokenTTL: cfg.accessTokenTTL,
            accessTokenFormat: cfg.accessTokenFormat,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  };
  if (cfg.rotateRefreshToken !== 'default') configuration.rotateRefreshToken = cfg.rotateRefreshToken;

  const provider = new Provider(issuer, configuration);
  provider.registerGrantType(
    'password',
    makePasswordGrant(provider, cfg),
    new Set(['username', 'password', 'scope', 'resource']),
    new Set(['resource']),
  );

  // slow_down for device-code polls closer than the configured interval (RFC 8628 §3.5).
  if (cfg.features.deviceFlow && cfg.device.slowDown) {
    const handlers = instance(provider).grantTypeHandlers;
    const builtin = handlers.get(DEVICE_CODE);
    const lastPoll = new Map();
    handlers.set(DEVICE_CODE, async (ctx) => {
      const code = ctx.oidc.params.device_code;
      const now = Date.now();
      const last = lastPoll.get(code);
      lastPoll.set(code, now);
      if (last !== undefined && now - last < cfg.device.interval * 1000) {
        throw new errors.SlowDown();
      }
      return builtin(ctx);
    });
  }

  // --- statistics and test endpoints ---------------------------------------------------------
  const newStats = () => ({ requests: {}, grants: {}, grants_revoked: 0, errors: [] });
  let stats = newStats();
  const bump = (table, key, status) => {
    table[key] ??= {};
    table[key][status] = (table[key][status] ?? 0) + 1;
  };
  const record = (event) => (ctx, err) => {
    const entry = {
      event,
      route: ctx?.oidc?.route,
      grant_type: ctx?.oidc?.params?.grant_type,
      error: err?.error ?? err?.message,
      error_detail: err?.error_detail,
    };
    stats.errors.push(entry);
    if (stats.errors.length > 100) stats.errors.shift();
    process.stderr.write(`oidc ${JSON.stringify(entry)}\n`);
  };
  for (const event of ['grant.error', 'revocation.error', 'introspection.error', 'device_authorization.error',
    'authorization.error', 'code_verification.error', 'device_resume.error', 'discovery.error', 'server_error']) {
    provider.on(event, record(event));
  }
  provider.on('grant.revoked', () => { stats.grants_revoked += 1; });

  const resource = makeResource(provider, cfg, { issuer, publicKey, dpopAlgs });

  provider.use(async (ctx, next) => {
    if (!ctx.path.startsWith('/_harness/')) {
      await next();
      const route = ctx.oidc?.route ?? 'unknown';
      bump(stats.requests, route, ctx.status);
      if (route === 'token') bump(stats.grants, ctx.oidc?.params?.grant_type ?? 'unknown', ctx.status);
      if (route === 'device_authorization' && ctx.status === 200 && cfg.device.interval !== null) {
        ctx.body = { ...ctx.body, interval: cfg.device.interval };
      }
      return;
    }
    ctx.set('Cache-Control', 'no-store');
    const route = `${ctx.method} ${ctx.path}`;
    switch (route) {
      case 'GET /_harness/resource':
      case 'POST /_harness/resource':
        await resource(ctx);
        bump(stats.requests, 'harness_resource', ctx.status);
        return;
      case 'GET /_harness/stats':
        ctx.body = stats;
        return;
      case 'POST /_harness/stats/reset':
        stats = newStats();
        ctx.body = stats;
        return;
      case 'GET /_harness/clock':
        ctx.body = { now: epoch(), offset: clockOffsetMs / 1000 };
        return;
      case 'POST /_harness/clock': {
        const advance = Number(ctx.query.advance);
        if (!Number.isFinite(advance)) {
          ctx.status = 400;
          ctx.body = { error: 'advance=SECONDS required' };
          return;
        }
        clockOffsetMs += Math.round(advance * 1000);
        ctx.body = { now: epoch(), offset: clockOffsetMs / 1000 };
        return;
      }
      case 'POST /_harness/resource/rotate-nonce':
        resource.rotateNonce();
        ctx.status = 204;
        return;
      default:
        ctx.status = 404;
        ctx.body = { error: 'not_found' };
    }
  });

  return provider;
}

// --- main ------------------------------------------------------------------------------------
function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`provider.mjs: ${err.message}\n`);
    process.exit(2);
  }
  const { port, watchStdin, cfg } = options;

  const server = http.createServer();
  server.keepAliveTimeout = 30_000;
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (watchStdin) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.resume();
  }

  server.on('error', (err) => {
    process.stderr.write(`provider.mjs: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(port, '127.0.0.1', () => {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    let provider;
    try {
      provider = build(issuer, cfg);
    } catch (err) {
      process.stderr.write(`provider.mjs: ${err.stack ?? err}\n`);
      process.exit(2);
    }
    server.on('request', provider.callback());
    process.stdout.write(`READY ${issuer}\n`);
  });
}

main();
