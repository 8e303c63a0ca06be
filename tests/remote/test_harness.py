"""The fake vendors themselves: they refuse what the vendors' specs do not allow."""

from __future__ import annotations

import httpx
from fakes import together as together_fake


def test_together_fake_refuses_a_request_outside_its_spec(together_server):
    together_server.reset()
    headers = {"Authorization": f"Bearer {together_fake.API_KEY}"}
    wrong_type = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
    misspelt = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_token": 5}
    assert httpx.post(f"{together_server.url}/chat/completions", json=wrong_type, headers=headers).status_code == 400
    assert httpx.post(f"{together_server.url}/chat/completions", json=misspelt, headers=headers).status_code == 400
    no_auth = httpx.post(f"{together_server.url}/chat/completions", json={"model": "m", "messages": []})
    assert no_auth.status_code == 400
    assert any("temperature" in v for v in together_server.violations)
    assert any("max_token" in v for v in together_server.violations)
    assert any("bearerAuth" in v for v in together_server.violations)
    together_server.reset()


def test_together_fake_checks_routes_only_the_lap_lists(together_server):
    together_server.reset()
    headers = {"Authorization": f"Bearer {together_fake.API_KEY}"}
    response = httpx.post(f"{together_server.url}/tci/execute", json={"language": "python"}, headers=headers)
    assert response.status_code == 400
    assert "code: required" in response.json()["error"]["message"]
    together_server.reset()


def test_emissary_fake_wants_its_api_key_header(emissary_server):
    emissary_server.reset()
    body = {"model": "m", "prompt": "hi"}
    response = httpx.post(f"{emissary_server.url}/v1/completions", json=body, headers={"Authorization": "Bearer x"})
    assert response.status_code == 400
    assert any("api_key" in v for v in emissary_server.violations)
    emissary_fake_key = {"X-API-Key": "wrong"}
    assert httpx.post(f"{emissary_server.url}/v1/completions", json=body, headers=emissary_fake_key).status_code == 401
    emissary_server.reset()
