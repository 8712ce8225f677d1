// Passkeys (WebAuthn): register one, use one as a second factor, or sign in with one.
// Buttons carry data-passkey="register" | "second-factor" | "login" and the two URLs of
// the ceremony; the server sends the options as JSON and checks the browser's answer.
// Without WebAuthn support the buttons stay, disabled, with a note why.
(() => {
  "use strict";

  const toBytes = (text) => {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const binary = atob(padded);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
    return out.buffer;
  };

  const toText = (buffer) => {
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };

  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": csrfToken(),
      },
      body: JSON.stringify(body || {}),
    });
    const isJSON = (response.headers.get("Content-Type") || "").includes("application/json");
    if (response.redirected && !isJSON) {
      // Sent to a page instead (signed out, or sudo mode needed): go there, and come back
      // to this page afterwards rather than to the JSON endpoint.
      const target = new URL(response.url);
      if (target.searchParams.has("next")) {
        target.searchParams.set("next", window.location.pathname + window.location.search);
      }
      window.location.assign(target.toString());
      throw new Error("Please confirm who you are first…");
    }
    let data = {};
    try {
      data = await response.json();
    } catch {
      // A non-JSON answer (an error page): say so below.
    }
    if (!response.ok) {
      throw new Error(data.error || `The server refused the request (${response.status}).`);
    }
    return data;
  }

  function creationOptions(options) {
    options.challenge = toBytes(options.challenge);
    options.user.id = toBytes(options.user.id);
    for (const credential of options.excludeCredentials || []) credential.id = toBytes(credential.id);
    return options;
  }

  function requestOptions(options) {
    options.challenge = toBytes(options.challenge);
    for (const credential of options.allowCredentials || []) credential.id = toBytes(credential.id);
    return options;
  }

  function registrationJSON(credential) {
    const response = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: {
        clientDataJSON: toText(response.clientDataJSON),
        attestationObject: toText(response.attestationObject),
        transports: response.getTransports ? response.getTransports() : [],
      },
    };
  }

  function assertionJSON(credential) {
    const response = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: {
        clientDataJSON: toText(response.clientDataJSON),
        authenticatorData: toText(response.authenticatorData),
        signature: toText(response.signature),
        userHandle: response.userHandle ? toText(response.userHandle) : null,
      },
    };
  }

  function explain(error) {
    if (error && error.name === "NotAllowedError") {
      return "The passkey prompt was closed or timed out. Try again.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This device already holds a passkey for your account.";
    }
    if (error && error.name === "SecurityError") {
      return "Passkeys need this site's name (such as localhost), not an IP address.";
    }
    return (error && error.message) || "Something went wrong. Try again.";
  }

  async function run(button) {
    const kind = button.dataset.passkey;
    const optionsUrl = button.dataset.optionsUrl;
    const finishUrl = button.dataset.finishUrl;
    const options = await post(optionsUrl);
    if (kind === "register") {
      const nameField = document.getElementById(button.dataset.nameInput);
      const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
      return post(finishUrl, {
        credential: registrationJSON(credential),
        name: nameField ? nameField.value : "",
      });
    }
    const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
    return post(finishUrl, { credential: assertionJSON(credential), next: button.dataset.next || "" });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const supported = typeof window.PublicKeyCredential === "function" && navigator.credentials;
    for (const button of document.querySelectorAll("button[data-passkey]")) {
      const status = document.getElementById(button.dataset.status);
      if (!supported) {
        button.disabled = true;
        if (status) status.textContent = "This browser cannot use passkeys.";
        continue;
      }
      button.addEventListener("click", async () => {
        button.disabled = true;
        if (status) {
          status.classList.remove("error");
          status.textContent = "Waiting for your passkey…";
        }
        try {
          const result = await run(button);
          if (status) status.textContent = "Done.";
          window.location.assign(result.redirect || window.location.href);
        } catch (error) {
          if (status) {
            status.classList.add("error");
            status.textContent = explain(error);
          }
          button.disabled = false;
        }
      });
    }
  });
})();
