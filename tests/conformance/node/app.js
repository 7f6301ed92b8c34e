// The conformance chat service exported with the OpenTelemetry JS SDK.
// Same conversation as the Python app: three "POST /chat" server spans with captured
// X-Request-ID / X-Session-ID / X-User-ID headers and an LLM child span with gen_ai.* attributes.
// Resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, endpoint from OTEL_EXPORTER_OTLP_*.
//
// Usage: node app.js <proto|json|grpc> <case-id>
'use strict';

const api = require('@opentelemetry/api');
const { TracerProvider, BatchSpanProcessor, StackContextManager } = require('@opentelemetry/sdk-trace');
const { defaultResource, detectResources, envDetector } = require('@opentelemetry/resources');

function exporter(kind) {
  switch (kind) {
    case 'proto':
      return new (require('@opentelemetry/exporter-trace-otlp-proto').OTLPTraceExporter)();
    case 'json':
      return new (require('@opentelemetry/exporter-trace-otlp-http').OTLPTraceExporter)();
    case 'grpc':
      return new (require('@opentelemetry/exporter-trace-otlp-grpc').OTLPTraceExporter)();
    default:
      throw new Error(`unknown exporter ${kind}`);
  }
}

async function main() {
  const [kind, caseId] = process.argv.slice(2);
  api.context.setGlobalContextManager(new StackContextManager().enable());
  const resource = defaultResource().merge(detectResources({ detectors: [envDetector] }));
  const provider = new TracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor({ exporter: exporter(kind), scheduledDelayMillis: 200 })],
  });
  const tracer = provider.getTracer('conformance.chat');
  for (let turn = 1; turn <= 3; turn++) {
    const headers = {
      'x-request-id': `${caseId}-req-${turn}`,
      'x-session-id': `${caseId}-session`,
      'x-user-id': `${caseId}-user`,
    };
    const attributes = { 'http.request.method': 'POST', 'url.path': '/chat' };
    for (const [k, v] of Object.entries(headers)) attributes[`http.request.header.${k}`] = [v];
    const root = tracer.startSpan('POST /chat', { kind: api.SpanKind.SERVER, attributes });
    const ctx = api.trace.setSpan(api.context.active(), root);
    const llm = tracer.startSpan('chat gpt-4o-mini', {
      kind: api.SpanKind.CLIENT,
      attributes: {
        'gen_ai.operation.name': 'chat',
        'gen_ai.system': 'openai',
        'gen_ai.request.model': 'gpt-4o-mini',
        'gen_ai.usage.input_tokens': 42 + turn,
        'gen_ai.usage.output_tokens': 7 + turn,
      },
    }, ctx);
    await new Promise((r) => setTimeout(r, 10));
    llm.end();
    root.setStatus({ code: api.SpanStatusCode.OK });
    root.end();
  }
  await provider.forceFlush();
  await provider.shutdown();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
