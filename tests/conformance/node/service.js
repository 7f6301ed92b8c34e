// A downstream Node.js service for the distributed-trace case: the Python FastAPI app calls it
// with W3C `traceparent`; its spans must join the caller's trace in MLflow.
// Prints "listening <port>" once ready; flushes and exits on SIGTERM.
//
// Usage: node service.js
'use strict';

const http = require('node:http');
const api = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { TracerProvider, BatchSpanProcessor, StackContextManager } = require('@opentelemetry/sdk-trace');
const { defaultResource, detectResources, envDetector } = require('@opentelemetry/resources');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');

api.context.setGlobalContextManager(new StackContextManager().enable());
api.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
const provider = new TracerProvider({
  resource: defaultResource().merge(detectResources({ detectors: [envDetector] })),
  spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter(), scheduledDelayMillis: 200 })],
});
const tracer = provider.getTracer('conformance.downstream');

const server = http.createServer((req, res) => {
  const parent = api.propagation.extract(api.context.active(), req.headers);
  const span = tracer.startSpan('POST /enrich', { kind: api.SpanKind.SERVER }, parent);
  const ctx = api.trace.setSpan(parent, span);
  const retrieval = tracer.startSpan('retrieve documents', {
    attributes: { 'gen_ai.operation.name': 'retrieve', 'retrieval.documents.count': 3 },
  }, ctx);
  req.resume();
  req.on('end', () => {
    retrieval.end();
    span.setStatus({ code: api.SpanStatusCode.OK });
    span.end();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"documents":3}');
  });
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

process.on('SIGTERM', async () => {
  server.close();
  await provider.forceFlush();
  await provider.shutdown();
  process.exit(0);
});
