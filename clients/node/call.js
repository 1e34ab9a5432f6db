// A plain Node.js client of imgsearch.v1, loading the .proto files themselves (no reflection,
// no generated code): embeds an image, searches with its vector, and sends one bad request.
// Usage: node call.js EMBEDDER_ADDR SEARCHER_ADDR IMAGE_PATH COLLECTION
// Prints one JSON object with what each call returned.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.resolve(__dirname, "..", "..");
const definition = protoLoader.loadSync(
  ["imgsearch/v1/embedder.proto", "imgsearch/v1/searcher.proto"],
  {
    includeDirs: [path.join(root, "protos"), path.join(root, "third_party", "protos")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const v1 = grpc.loadPackageDefinition(definition).imgsearch.v1;
const [embedderAddr, searcherAddr, imagePath, collection] = process.argv.slice(2);
const embedder = new v1.EmbedderService(embedderAddr, grpc.credentials.createInsecure());
const searcher = new v1.SearcherService(searcherAddr, grpc.credentials.createInsecure());

function call(client, method, request) {
  const deadline = new Date(Date.now() + 30000);
  return new Promise((resolve) => {
    client[method](request, { deadline }, (error, response) => {
      if (error) resolve({ code: grpc.status[error.code], message: error.details });
      else resolve({ code: "OK", response });
    });
  });
}

(async () => {
  const out = {};
  const image = fs.readFileSync(imagePath);
  const embedded = await call(embedder, "Embed", { images: [{ key: "node", data: image }] });
  out.embed = { code: embedded.code, message: embedded.message };
  const vector = embedded.response && embedded.response.results[0].vector;
  out.embed.dim = vector ? vector.values.length : 0;
  const found = await call(searcher, "Search", { collection, vector, topK: 3 });
  out.search = {
    code: found.code,
    message: found.message,
    hits: found.response ? found.response.hits.map((h) => ({ id: h.id, label: h.label, distance: h.distance })) : [],
  };
  const bad = await call(searcher, "Search", { collection, vector: { values: [1, 2, 3] }, topK: 3 });
  out.bad = { code: bad.code, message: bad.message };
  console.log(JSON.stringify(out));
  embedder.close();
  searcher.close();
})();
