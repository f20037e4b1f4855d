// The API reference page at "/": Swagger UI over this service's /docs.json (service/http/openapi.py).
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    tryItOutEnabled: false,
    defaultModelsExpandDepth: 0,
  });
});
