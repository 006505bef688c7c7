"""The programmatic API: the async jobs API under /api/ and OpenAI's Images API under /v1/,
over the same queue, quotas, bridges, live events and storage as the web pages."""
