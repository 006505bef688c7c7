"""Sign-up and a log-in that throttles repeated failures."""

from __future__ import annotations

import hashlib

from django import forms
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters


class SignUpForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used only to reset your password.")

    class Meta(UserCreationForm.Meta):  # type: ignore[name-defined]  # the stubs lack Meta
        model = User
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email address already exists.")
        return email


@sensitive_post_parameters("password1", "password2")
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "unknown")


def _failure_limits(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    """The counters a failed log-in adds to, each with the failures it allows in the window.

    Per username the limit is tight: that is what stops guessing one account's password. Per
    address it is far looser: many people may share one address (an office behind one proxy,
    a mobile carrier's NAT), and a tight limit there would let anyone lock all of them out by
    failing five times; it only stops one address from trying many accounts.
    """
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [
        (f"login-failures:user:{digest}", settings.LOGIN_FAILURE_LIMIT),
        (f"login-failures:addr:{_client_address(request)}", settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS),
    ]


class ThrottledAuthenticationForm(AuthenticationForm):
    """Refuses to even check the password once a username or address failed too often."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "throttled": "Too many failed log-in attempts. Please wait %(minutes)d minutes and try again.",
    }

    def clean(self) -> dict:
        limits = _failure_limits(self.request, self.data.get("username", "")) if self.request else []
        if any(cache.get(key, 0) >= limit for key, limit in limits):
            raise forms.ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"minutes": max(1, settings.LOGIN_FAILURE_WINDOW_SECONDS // 60)},
            )
        try:
            return super().clean()
        except forms.ValidationError:
            for key, _ in limits:
                cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW_SECONDS)
                try:
                    cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, settings.LOGIN_FAILURE_WINDOW_SECONDS)
            raise


@method_decorator(sensitive_post_parameters("password"), name="dispatch")
class ThrottledLoginView(LoginView):
    form_class = ThrottledAuthenticationForm
    redirect_authenticated_user = True
