// A real OpenID provider for the SSO tests: the `oidc-provider` package (a certified
// implementation) with one static client and its development login form (devInteractions:
// any login and password sign in; the login is the account's email address).
//
// Started by tests/oidc_helpers.py on a free loopback port. Configuration comes from the
// environment: OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS
// (space-separated). It prints one line "ready <issuer>" once it listens.
//
// A login starting with "unverified" gets email_verified=false, so the tests can check
// that Keydesk refuses an address the provider has not verified.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;

const configuration = {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: process.env.OIDC_REDIRECT_URIS.split(' ').filter(Boolean),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  // Put the email claims into the ID token of the code flow too (the default keeps them
  // for the userinfo endpoint), as Google, Entra ID, Okta and Keycloak do.
  conformIdTokenClaims: false,
  // Refuse any authorization request without PKCE, so the tests prove Keydesk sends it.
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: !id.startsWith('unverified') };
      },
    };
  },
  // The static client is first-party: grant what it asks without a consent screen.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    grant.addOIDCClaims(['email', 'email_verified']);
    await grant.save();
    return grant;
  },
  ttl: { Session: 600, Interaction: 600, Grant: 600, AuthorizationCode: 60, AccessToken: 600, IdToken: 600 },
};

const provider = new Provider(issuer, configuration);
provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
