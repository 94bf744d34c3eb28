package io.apicurio.registry.services;

import io.smallrye.config.ConfigSourceInterceptor;
import io.smallrye.config.ConfigSourceInterceptorContext;
import io.smallrye.config.ConfigValue;

/**
 * Takes the place of the app's interceptor of the same name, which answers
 * {@code quarkus.datasource.<kind>.active=false} for every database kind not in use. The app
 * injects all four datasources; Quarkus 3.15, which Apicurio Registry 3.0.9 was built on, let an
 * inactive one be injected, Quarkus 3.33 (what Maven Central serves here whole) refuses to start.
 * Here all four are H2 (see application.properties) and stay active.
 */
public class DatabaseConfigInterceptor implements ConfigSourceInterceptor {

    @Override
    public ConfigValue getValue(ConfigSourceInterceptorContext context, String name) {
        return context.proceed(name);
    }
}
