"""The whole contract against a real TEMPLATE server (fixtures in tests/integration)."""

import pytest

from pykv.testing import ConformanceTests

pytestmark = [pytest.mark.integration, pytest.mark.template]


class TestTemplateStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, template_url: str) -> str:  # a session fixture of the harness
        return template_url
