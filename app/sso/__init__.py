"""Single sign-on (OpenID Connect, one provider per tenant) and SCIM 2.0 provisioning.

- service.py: a tenant's provider settings, checked against its discovery document, the
  email domains that pick the tenant, and `enforce`;
- oidc.py: the sign-in itself (authorization code + PKCE, state, nonce, ID-token checks);
- outbound.py: every request to a provider, guarded against SSRF;
- scim.py: the SCIM bearer token and the Users resource.

No Flask request objects in here: the views (app/sso/views.py, app/sso/scim_views.py,
app/admin/sso.py) pass what they read in.
"""
