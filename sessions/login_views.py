"""The browser's login page, saying so (429, Retry-After) when logins are throttled.

The throttle itself is the authentication backend (sessions/login_throttle.py), which
holds for every login form; this view only makes the refusal clear on vterm's own page.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views


class ThrottledLoginView(auth_views.LoginView):
    def form_invalid(self, form):
        response = super().form_invalid(form)
        wait = getattr(self.request, "vterm_login_retry_after", 0)
        if wait:
            response.status_code = 429
            response["Retry-After"] = str(wait)
        return response

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["retry_after"] = getattr(self.request, "vterm_login_retry_after", 0)
        return context
