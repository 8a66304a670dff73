// In-browser decrypt of a job's result (scheme kiln-hpke-v1, docs/decrypt.md) with WebCrypto.
// The secret typed here stays in this page: it is used only by crypto.subtle, never put in a
// request, a URL, a cookie or storage. The page downloads the encrypted blob from the console
// (same origin) and opens it here.
//
//   result private key = HKDF-SHA256(ikm = secret, salt, info = "kiln/result-key/v1", 32)  (X25519)
//   file key = HPKE base-mode open (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//              AES-256-GCM) of sealed_key = enc(32) || ciphertext, info = "kiln/result/v1:" + job id
//   blob = records nonce(12) || AES-256-GCM ciphertext || tag(16), one per chunk_size bytes of
//          plaintext, each with associated data job id || index (4 bytes, big-endian) || last?1:0
"use strict";

(function () {
  const dataElement = document.getElementById("decrypt-data");
  const button = document.getElementById("decrypt-button");
  if (!dataElement || !button) return;
  const meta = JSON.parse(dataElement.textContent);
  const secretInput = document.getElementById("decrypt-secret");
  const status = document.getElementById("decrypt-status");
  const output = document.getElementById("decrypt-output");
  const save = document.getElementById("decrypt-save");
  const preview = document.getElementById("decrypt-preview");
  const subtle = window.crypto && window.crypto.subtle;
  const utf8 = new TextEncoder();

  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  };
  const i2osp = (value, length) => {
    const out = new Uint8Array(length);
    for (let i = length - 1; i >= 0; i -= 1) {
      out[i] = value & 0xff;
      value = Math.floor(value / 256);
    }
    return out;
  };
  const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const fromBase64Url = (text) => fromBase64(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));

  // HKDF (RFC 5869) from HMAC, for HPKE's labelled Extract and Expand.
  async function hmac(key, data) {
    const k = await subtle.importKey("raw", key.length ? key : new Uint8Array(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await subtle.sign("HMAC", k, data));
  }
  const extract = (salt, ikm) => hmac(salt, ikm);
  async function expand(prk, info, length) {
    let block = new Uint8Array(0);
    let out = new Uint8Array(0);
    for (let i = 1; out.length < length; i += 1) {
      block = await hmac(prk, concat(block, info, Uint8Array.of(i)));
      out = concat(out, block);
    }
    return out.slice(0, length);
  }
  const HPKE_V1 = utf8.encode("HPKE-v1");
  const KEM_SUITE = concat(utf8.encode("KEM"), i2osp(0x0020, 2));
  const HPKE_SUITE = concat(utf8.encode("HPKE"), i2osp(0x0020, 2), i2osp(0x0001, 2), i2osp(0x0002, 2));
  const labeledExtract = (suite, salt, label, ikm) => extract(salt, concat(HPKE_V1, suite, utf8.encode(label), ikm));
  const labeledExpand = (suite, prk, label, info, length) =>
    expand(prk, concat(i2osp(length, 2), HPKE_V1, suite, utf8.encode(label), info), length);

  // PKCS #8 wrapping of a raw X25519 private key (WebCrypto imports private keys only so).
  const PKCS8_X25519 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);

  async function resultPrivateKey(secret, salt) {
    const ikm = await subtle.importKey("raw", utf8.encode(secret), "HKDF", false, ["deriveBits"]);
    const raw = new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: salt, info: utf8.encode("kiln/result-key/v1") }, ikm, 256));
    const key = await subtle.importKey("pkcs8", concat(PKCS8_X25519, raw), { name: "X25519" }, true, ["deriveBits"]);
    const jwk = await subtle.exportKey("jwk", key);
    return { key: key, publicKey: fromBase64Url(jwk.x) };
  }

  async function openFileKey(secret, encryption, jobId) {
    const sealed = fromBase64(encryption.sealed_key);
    const enc = sealed.slice(0, 32);
    const ciphertext = sealed.slice(32);
    const recipient = await resultPrivateKey(secret, fromBase64(encryption.salt));
    const ephemeral = await subtle.importKey("raw", enc, { name: "X25519" }, false, []);
    const dh = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: ephemeral }, recipient.key, 256));
    const eaePrk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "eae_prk", dh);
    const shared = await labeledExpand(KEM_SUITE, eaePrk, "shared_secret", concat(enc, recipient.publicKey), 32);
    const info = utf8.encode("kiln/result/v1:" + jobId);
    const pskIdHash = await labeledExtract(HPKE_SUITE, new Uint8Array(0), "psk_id_hash", new Uint8Array(0));
    const infoHash = await labeledExtract(HPKE_SUITE, new Uint8Array(0), "info_hash", info);
    const context = concat(Uint8Array.of(0), pskIdHash, infoHash);
    const secretPrk = await labeledExtract(HPKE_SUITE, shared, "secret", new Uint8Array(0));
    const key = await labeledExpand(HPKE_SUITE, secretPrk, "key", context, 32);
    const nonce = await labeledExpand(HPKE_SUITE, secretPrk, "base_nonce", context, 12);
    const aead = await subtle.importKey("raw", key, "AES-GCM", false, ["decrypt"]);
    return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: nonce }, aead, ciphertext));
  }

  async function decryptBlob(blob, fileKey, jobId, chunkSize) {
    const key = await subtle.importKey("raw", fileKey, "AES-GCM", false, ["decrypt"]);
    const recordSize = 12 + chunkSize + 16;
    const id = utf8.encode(jobId);
    const chunks = [];
    for (let offset = 0, index = 0; ; offset += recordSize, index += 1) {
      const record = blob.subarray(offset, offset + recordSize);
      const last = offset + record.length >= blob.length;
      if (record.length < 28) throw new Error(`chunk ${index} is truncated`);
      const aad = concat(id, i2osp(index, 4), Uint8Array.of(last ? 1 : 0));
      chunks.push(new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: record.subarray(0, 12), additionalData: aad }, key, record.subarray(12))));
      if (last) return chunks;
    }
  }

  function show(url) {
    preview.replaceChildren();
    const kind = meta.content_type.split("/")[0];
    let element = null;
    if (kind === "image") {
      element = document.createElement("img");
      element.alt = "The decrypted result";
    } else if (kind === "audio" || kind === "video") {
      element = document.createElement(kind);
      element.controls = true;
      element.setAttribute("aria-label", "The decrypted result");
    }
    if (element) {
      element.src = url;
      preview.append(element);
    }
  }

  button.addEventListener("click", async () => {
    const secret = secretInput.value.trim();
    if (!secret) {
      status.textContent = "Paste the key's secret first.";
      return;
    }
    if (!subtle) {
      status.textContent = "This browser offers no WebCrypto here (the console must be served over https).";
      return;
    }
    if (meta.encryption.scheme !== "kiln-hpke-v1") {
      status.textContent = "This result uses an encryption scheme this page does not know.";
      return;
    }
    button.disabled = true;
    status.textContent = "Downloading the encrypted result…";
    try {
      const response = await fetch(meta.blob_url, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error(`the download failed (HTTP ${response.status})`);
      const blob = new Uint8Array(await response.arrayBuffer());
      status.textContent = "Decrypting…";
      let fileKey;
      try {
        fileKey = await openFileKey(secret, meta.encryption, meta.job_id);
      } catch (_error) {
        throw new Error(`this secret does not open the result: use the secret of key ${meta.encryption.key_id}`);
      }
      let chunks;
      try {
        chunks = await decryptBlob(blob, fileKey, meta.job_id, meta.encryption.chunk_size);
      } catch (_error) {
        throw new Error("the encrypted file is damaged or incomplete: download it again");
      }
      const plain = new Blob(chunks, { type: meta.content_type });
      if (save.href.startsWith("blob:")) URL.revokeObjectURL(save.href);
      const url = URL.createObjectURL(plain);
      save.href = url;
      const extension = { "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "audio/wav": ".wav", "audio/mpeg": ".mp3", "video/mp4": ".mp4" }[meta.content_type] || "";
      save.download = meta.job_id + extension;
      show(url);
      output.hidden = false;
      secretInput.value = "";
      status.textContent = `Decrypted: ${plain.size} bytes of ${meta.content_type}. The secret was cleared from the field.`;
    } catch (error) {
      status.textContent = `Not decrypted: ${error.message}.`;
    } finally {
      button.disabled = false;
    }
  });
})();
