// Parley's widget loader. A website adds:
//   <script src="https://PARLEY_HOST/widget.js" data-site="SITE_KEY" async></script>
// It adds a launcher button and opens the chat in an iframe served from Parley's own origin. The
// host page and the iframe talk only by postMessage, and each checks who is talking.
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.__parleyWidget) return;
  window.__parleyWidget = true;
  var site = script.getAttribute('data-site') || '';
  var origin = new URL(script.src).origin;
  var label = script.getAttribute('data-label') || 'Chat with us';

  function css(el, styles) {
    for (var k in styles) el.style.setProperty(k, styles[k]);
  }

  var frame = document.createElement('iframe');
  frame.src = origin + '/widget/frame?site=' + encodeURIComponent(site);
  frame.title = 'Chat';
  frame.setAttribute('allow', '');
  css(frame, {
    position: 'fixed', bottom: '88px', right: '20px', width: '370px', height: '560px',
    'max-width': 'calc(100vw - 40px)', 'max-height': 'calc(100vh - 110px)', border: '0',
    'border-radius': '14px', 'box-shadow': '0 12px 40px rgba(0,0,0,.25)', 'z-index': '2147483000',
    display: 'none', background: '#fff'
  });

  var button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.setAttribute('aria-expanded', 'false');
  button.setAttribute('aria-label', label);
  css(button, {
    position: 'fixed', bottom: '20px', right: '20px', height: '52px', padding: '0 22px',
    'border-radius': '26px', border: '0', background: '#2857d6', color: '#fff',
    font: '600 15px system-ui, sans-serif', cursor: 'pointer', 'z-index': '2147483001',
    'box-shadow': '0 6px 20px rgba(0,0,0,.25)'
  });

  var open = false;
  function setOpen(value) {
    open = value;
    frame.style.setProperty('display', open ? 'block' : 'none');
    button.setAttribute('aria-expanded', String(open));
    button.textContent = open ? 'Close chat' : label;
    if (open && frame.contentWindow) frame.contentWindow.postMessage({ type: 'parley:opened' }, origin);
  }
  button.addEventListener('click', function () { setOpen(!open); });

  // The visitor's token is kept in this site's own storage: browsers partition or block storage
  // in third-party iframes, so the widget asks for it and hands updates back by postMessage.
  var storeKey = 'parley.visitor.' + site;
  function stored() {
    try { return window.localStorage.getItem(storeKey); } catch (e) { return null; }
  }

  window.addEventListener('message', function (event) {
    // Only our own iframe, from Parley's origin.
    if (event.origin !== origin || event.source !== frame.contentWindow) return;
    var data = event.data || {};
    if (data.type === 'parley:close') setOpen(false);
    if (data.type === 'parley:open') setOpen(true);
    if (data.type === 'parley:token?') frame.contentWindow.postMessage({ type: 'parley:token', token: stored() }, origin);
    if (data.type === 'parley:store' && typeof data.token === 'string' && data.token.length <= 128) {
      try { window.localStorage.setItem(storeKey, data.token); } catch (e) { /* storage off: this visit only */ }
    }
  });

  function mount() {
    document.body.appendChild(frame);
    document.body.appendChild(button);
  }
  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();
