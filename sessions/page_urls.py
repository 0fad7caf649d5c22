from django.contrib.auth import views as auth_views
from django.urls import path

from . import pages
from .login_views import ThrottledLoginView

urlpatterns = [
    # Django's LoginView, answering 429 with Retry-After while logins are throttled.
    path("login/", ThrottledLoginView.as_view(template_name="vterm/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", pages.session_list, name="page-sessions"),
    path("sessions/<uuid:session_id>/", pages.terminal, name="page-terminal"),
    path("sessions/<uuid:session_id>/end/", pages.session_end, name="page-session-end"),
]
